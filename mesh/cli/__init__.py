"""The ``mesh`` command line: subcommands, completion, demo, self-check, launch."""

from typing import Any


def __getattr__(name: str) -> Any:
    # ``mesh.cli:main`` is the console script's entry point; loaded on first use, so that
    # importing one module of this package (``mesh.cli.demo``) does not load every command.
    if name == "main":
        from .app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
