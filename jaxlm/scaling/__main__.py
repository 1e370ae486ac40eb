"""`python -m jaxlm.scaling`: runs the command line in jaxlm/cli/scaling.py."""

if __name__ == "__main__":
  from jaxlm.cli.scaling import main
  main()
