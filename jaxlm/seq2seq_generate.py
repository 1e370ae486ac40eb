"""`python -m jaxlm.seq2seq_generate`: the command line in jaxlm/cli/seq2seq.py."""
from jaxlm.cli.seq2seq import entry

if __name__ == "__main__":
  entry()
