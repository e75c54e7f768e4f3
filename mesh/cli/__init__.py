"""The ``mesh`` command line: subcommands, completion, demo, self-check, launch."""

from .app import main  # the console script's entry point, ``mesh.cli:main``

__all__ = ["main"]
