"""`python -m zutiscli` runs the `zutis` command line."""

from zutiscli.cli.app import main

if __name__ == "__main__":
    main()
