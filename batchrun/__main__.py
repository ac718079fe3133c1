"""`python -m batchrun` is the `batchrun` command."""

from .cli import main

main(prog_name="batchrun")
