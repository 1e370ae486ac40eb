"""`python -m jaxlm.export`: the command line in jaxlm/cli/export.py."""
from jaxlm.cli.export import entry

if __name__ == "__main__":
  entry()
