"""`python -m jaxlm.evaluate`: the command line in jaxlm/cli/evaluate.py."""
from jaxlm.cli.evaluate import entry

if __name__ == "__main__":
  entry()
