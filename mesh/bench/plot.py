"""``mesh bench --plot DIR``: PNG charts of a bench summary (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument


def plot(summary: dict[str, Any], directory: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InvalidArgument("--plot needs matplotlib: pip install matplotlib") from exc
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary["results"]
    written = []

    sizes = [
        r for r in rows if r["scenario"].startswith("request/reply") and "at" not in r["scenario"]
    ]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for system in ("mesh", "raw pyzmq"):
        mine = [r for r in sizes if r["system"] == system]
        for point, style in (("p50", "-o"), ("p99", "--o")):
            axis.plot(
                [r["params"]["size"] for r in mine],
                [r["latency_us"][point] for r in mine],
                style,
                label=f"{system} {point}",
            )
    axis.set(xscale="log", yscale="log", xlabel="body (bytes)", ylabel="round trip (us)")
    axis.set_title("Request/reply latency by size")
    axis.legend()
    written.append(_save(figure, out / "latency_by_size.png", plt))

    sweep = [r for r in rows if r["scenario"].startswith("concurrency")]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for system in ("mesh", "raw pyzmq"):
        mine = [r for r in sweep if r["system"] == system]
        axis.plot(
            [r["throughput"]["messages_per_s"] for r in mine],
            [r["latency_us"]["p50"] for r in mine],
            "-o",
            label=system,
        )
        for r in mine:
            axis.annotate(str(r["params"]["outstanding"]), (r["throughput"]["messages_per_s"],
                                                            r["latency_us"]["p50"]))  # fmt: skip
    axis.set(xlabel="requests/s", ylabel="p50 latency (us)")
    axis.set_title("Latency vs throughput, 1 to 64 outstanding")
    axis.legend()
    written.append(_save(figure, out / "latency_vs_throughput.png", plt))
    return written


def _save(figure: Any, path: Path, plt: Any) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
