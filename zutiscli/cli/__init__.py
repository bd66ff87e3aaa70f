"""The `zutis` command line: parsing, validation and printing only; the work is in `pipeline`."""
