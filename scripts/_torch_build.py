"""Which build of torch pip would install: ``cpu`` or ``cuda``, read from the JSON report of
``pip install --dry-run --no-deps --report - torch==VERSION`` on stdin.

scripts/setup asks before installing because the answer depends on where pip looks: PyPI's
Linux x86_64 wheel of torch is the CUDA build, which pulls about 2.7 GB of nvidia wheels,
while a machine with a local CPU wheel or PyTorch's CPU index offers the 190 MB CPU build.
Only the standard library is used: setup runs this before anything else is installed.
"""

from __future__ import annotations

import json
import sys

CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")


def build_of(report: dict) -> str:
    """``cpu`` when the torch pip chose needs no CUDA package, else ``cuda``.

    A requirement is counted whatever its marker says: a wheel that names a CUDA package
    for some platform is not the CPU build, and asking PyTorch's CPU index costs nothing
    more than a wrong guess the other way (several GB)."""
    for item in report.get("install", []):
        metadata = item.get("metadata", {})
        if metadata.get("name", "").lower() != "torch":
            continue
        if metadata.get("version", "").endswith("+cpu"):
            return "cpu"
        needs = [r.split(";")[0].strip().lower() for r in metadata.get("requires_dist", [])]
        return "cuda" if any(n.startswith(CUDA_PREFIXES) for n in needs) else "cpu"
    raise SystemExit("_torch_build: the report names no torch")


if __name__ == "__main__":
    print(build_of(json.load(sys.stdin)))
