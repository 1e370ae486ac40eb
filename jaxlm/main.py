"""`python -m jaxlm.main`: runs the command line in jaxlm/cli/train.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.train import entry
  entry()
