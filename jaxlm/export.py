"""`python -m jaxlm.export`: runs the command line in jaxlm/cli/export.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.export import entry
  entry()
