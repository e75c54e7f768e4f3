"""For the Python scripts in scripts/: run them in the project's .venv, set up the way
scripts/test and scripts/demo set it up, whichever ``python3`` they were started with.

A fresh clone has no .venv, and a user types ``scripts/rtt`` without activating anything:
the script then runs ``scripts/setup EXTRAS`` (which does nothing when the venv is already
there) and starts itself again with the venv's Python.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def in_project_venv(extras: str = "") -> None:
    """Return in the venv with ``ROOT`` importable; otherwise set it up and re-exec."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        return
    setup = [str(ROOT / "scripts" / "setup"), *([extras] if extras else [])]
    if subprocess.run(setup, check=False).returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: scripts/setup {extras} failed (see above)")
    python = VENV / "bin" / "python"
    os.execv(python, [str(python), sys.argv[0], *sys.argv[1:]])


def counts(doc: str | None, **defaults: int) -> list[int]:
    """The script's optional positional counts (``ROUNDS``, ``COUNT`` …) in order, with
    ``--help`` answered from its docstring; a count that is not a positive integer is one
    line and exit status 2."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, default in defaults.items():
        parser.add_argument(
            name.lower(), metavar=name, nargs="?", type=_positive, default=default,
            help=f"default {default}",
        )  # fmt: skip
    found = parser.parse_args()
    return [getattr(found, name.lower()) for name in defaults]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value
