"""`python -m jaxlm.convert`: runs the command line in jaxlm/cli/convert.py."""

if __name__ == "__main__":
  from jaxlm.cli.convert import entry
  entry()
