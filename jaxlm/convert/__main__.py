"""`python -m jaxlm.convert`: the command line in jaxlm/cli/convert.py."""
from jaxlm.cli.convert import entry

if __name__ == "__main__":
  entry()
