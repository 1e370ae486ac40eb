"""`python -m jaxlm.seq2seq_generate`: runs the command line in jaxlm/cli/seq2seq.py (importing
this module does nothing, so any of them can be imported beside another)."""

if __name__ == "__main__":
  from jaxlm.cli.seq2seq import entry
  entry()
