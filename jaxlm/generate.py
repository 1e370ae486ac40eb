"""`python -m jaxlm.generate`: the command line in jaxlm/cli/generate.py."""
from jaxlm.cli.generate import entry

if __name__ == "__main__":
  entry()
