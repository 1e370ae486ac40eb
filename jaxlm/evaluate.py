"""`python -m jaxlm.evaluate`: runs the command line in jaxlm/cli/evaluate.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.evaluate import entry
  entry()
