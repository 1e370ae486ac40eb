"""`python -m jaxlm.main`: the command line in jaxlm/cli/train.py."""
from jaxlm.cli.train import entry

if __name__ == "__main__":
  entry()
