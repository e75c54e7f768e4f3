"""Model-backed agents built on mesh's public API: streamed generation, embeddings, routing.

``Agent`` and ``method`` need only ``mesh``; the model-backed agents need the ``llm`` extra
(torch, transformers) and live in their own modules so importing this package stays light:
``agents.llm.LLMAgent``, ``agents.embedding.EmbeddingAgent``, ``agents.router.RouterAgent``,
``agents.service.IntakeAgent`` and ``agents.service.LoggerAgent``.
"""

from .base import Agent, MethodSpec, method

__all__ = ["Agent", "MethodSpec", "method"]
