"""`python -m jaxlm.generate`: runs the command line in jaxlm/cli/generate.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.generate import entry
  entry()
