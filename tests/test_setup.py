"""scripts/setup installs the torch build the README promises (issue 21, item 5).

What pip would install is asked of pip itself (`--dry-run --report`), from the indexes the
user has: PyPI alone offers the CUDA build, a CPU wheel where pip can find one is taken.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import zipfile

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

spec = importlib.util.spec_from_file_location("_torch_build", ROOT / "scripts/_torch_build.py")
torch_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(torch_build)


def pip_report(*where: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--isolated", "--disable-pip-version-check",
         "--dry-run", "--no-deps", "--ignore-installed", "--quiet", "--report", "-",
         *where, "torch==2.13.0"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def fake_wheel(folder, version: str, requires: list[str]) -> None:
    """A wheel named and described like torch's (nothing inside): all pip's resolver reads."""
    name = f"torch-{version}"
    with zipfile.ZipFile(folder / f"{name}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(
            f"{name}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        )
        wheel.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        wheel.writestr(f"{name}.dist-info/RECORD", "")


def test_pypi_alone_offers_the_cuda_build():
    """What the user hit: `pip install torch==2.13.0` with PyPI alone pulls the CUDA build."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
    except OSError as exc:
        pytest.skip(f"needs PyPI (pypi.org:443): {exc}")
    report = pip_report("--index-url", "https://pypi.org/simple")
    assert torch_build.build_of(report) == "cuda"


@pytest.mark.parametrize(
    ("version", "requires", "build"),
    [
        ("2.13.0+cpu", ["filelock", "sympy>=1.13.3"], "cpu"),
        ("2.13.0", ["filelock", "typing-extensions>=4.10.0"], "cpu"),  # macOS-like: no CUDA
        ("2.13.0", ["filelock", 'nvidia-cublas==13.1.1.3; platform_system == "Linux"'], "cuda"),
        ("2.13.0", ['triton==3.7.1; platform_system == "Linux"'], "cuda"),
        ("2.13.0", ["nvidia_cublas==13.1.1.3"], "cuda"),  # the same name, PEP 503
        ("2.13.0+cu128", ["filelock"], "cuda"),  # a GPU build says so in its label
        ("2.13.0+rocm6.4", ["pytorch-triton-rocm==3.5.0"], "cuda"),
    ],
)
def test_a_wheel_pip_can_find_is_judged_by_what_it_needs(tmp_path, version, requires, build):
    fake_wheel(tmp_path, version, requires)
    report = pip_report("--no-index", "--find-links", str(tmp_path))
    assert torch_build.build_of(report) == build


def test_an_unknown_torch_choice_is_one_line():
    done = subprocess.run(
        [str(ROOT / "scripts/setup"), "llm"], env={"PATH": "/usr/bin:/bin", "MESH_TORCH": "rocm"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "scripts/setup: MESH_TORCH is 'rocm'; use cpu (the default) or cuda\n"
