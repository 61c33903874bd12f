"""`python -m apgms` is the `apgms` command."""

from apgms.cli import main

main()
