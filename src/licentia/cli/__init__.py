"""The `licentia` command line."""
