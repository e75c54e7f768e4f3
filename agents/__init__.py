"""Model-backed agents built on mesh's public API (streamed generation, embeddings, routing).

The agents arrive with the live mesh; this package holds their place in the distribution.
"""
