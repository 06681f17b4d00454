"""`python -m acpipeline.cli`."""

from acpipeline.cli import run

run()
