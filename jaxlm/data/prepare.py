"""`python -m jaxlm.data.prepare`: runs the command line in jaxlm/cli/prepare.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.prepare import entry
  entry()
