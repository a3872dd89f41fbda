"""Run the CLI as ``python -m boltlink``."""

from boltlink.cli import main

main()
