"""The `apgms` command line: dev stack, migrations and operations tooling."""
