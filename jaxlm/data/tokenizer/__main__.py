"""`python -m jaxlm.data.tokenizer`: runs the command line in jaxlm/cli/tokenizer.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.tokenizer import entry
  entry()
