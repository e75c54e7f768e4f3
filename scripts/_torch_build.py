"""Which build of torch pip would install: ``cpu`` or ``cuda``, read from the JSON report of
``pip install --dry-run --no-deps --report - torch==VERSION`` on stdin.

scripts/setup asks before installing because the answer depends on where pip looks: PyPI's
Linux x86_64 wheel of torch is the CUDA build, which pulls about 2.7 GB of nvidia wheels,
while a machine with a local CPU wheel or PyTorch's CPU index offers the 190 MB CPU build.
Only the standard library is used: setup runs this before anything else is installed.
"""

from __future__ import annotations

import json
import re
import sys

ACCELERATOR_PREFIXES = ("nvidia-", "cuda-", "triton", "pytorch-triton")  # CUDA's and ROCm's


def build_of(report: dict) -> str:
    """``cpu`` when the torch pip chose is the CPU build, else ``cuda`` (any GPU build).

    A local version label says it where there is one (``+cpu``; ``+cu128``, ``+rocm6.4``
    are not). Without one, a wheel is the CPU build only if it needs no accelerator
    package, whatever the requirement's marker says: asking PyTorch's CPU index costs
    little, a wrong guess the other way several GB."""
    for item in report.get("install") or []:
        metadata = item.get("metadata") or {}
        if _normal(metadata.get("name") or "") != "torch":
            continue
        _, _, label = (metadata.get("version") or "").partition("+")
        if label:
            return "cpu" if label == "cpu" else "cuda"
        requirements = [r.strip() for r in metadata.get("requires_dist") or []]
        needs = [_normal(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]) for r in requirements]
        return "cuda" if any(n.startswith(ACCELERATOR_PREFIXES) for n in needs) else "cpu"
    raise SystemExit("_torch_build: the report names no torch")


def _normal(name: str) -> str:
    """A project name as PyPI compares them (PEP 503): nvidia_cublas is nvidia-cublas."""
    return re.sub(r"[-_.]+", "-", name).lower()


if __name__ == "__main__":
    print(build_of(json.load(sys.stdin)))
