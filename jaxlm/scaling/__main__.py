"""`python -m jaxlm.scaling`: the command line in jaxlm/cli/scaling.py."""
from jaxlm.cli.scaling import main

if __name__ == "__main__":
  main()
