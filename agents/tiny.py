"""A tiny causal language model built here, offline: what the tests and the demo run on.

A GPT-2-style model (2 layers, 64-wide) with random weights and a byte-level BPE tokenizer
trained on a few paragraphs below, saved with ``save_pretrained`` like any model directory,
so it goes through exactly the loading code a real model does. Its text is gibberish: it
exists to exercise the plumbing (tokenizing, streaming, chat templates, cancelling), not to
answer anything. Building takes about a second; a directory already built is reused.

    python -m agents.tiny DIR
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any

MARKER = "agent-mesh-tiny.json"
VERSION = 3
END = "<|endoftext|>"
UNKNOWN = "<|unknown|>"
SEED = 1234
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = """
Customer service answers questions about billing, invoices, refunds and payment methods.
Technical support helps when the device will not start, the network drops, or an update
fails. Shipping tracks parcels, delivery dates, lost packages and returns to the warehouse.
The agent streams its answer token by token over the mesh, sealed end to end.
Hello, how can I help you today? Thank you for waiting. Your order is on its way.
"""


def build_tiny_model(directory: str | Path) -> Path:
    """Build (or reuse) the tiny model in ``directory``; returns the directory."""
    return build_random_model(directory, layers=2, width=64, heads=2)


def build_random_model(
    directory: str | Path, *, layers: int, width: int, heads: int, positions: int = 1024
) -> Path:
    """A random-weights GPT-2 of the given size with the tiny tokenizer (the tiny model is
    the smallest; 12 layers, 768 wide, 12 heads is GPT-2 small's shape), built or reused.
    ``positions``: the longest context (prompt and generated tokens) it takes."""
    path = Path(directory)
    marker = path / MARKER
    shape = {"layers": layers, "width": width, "heads": heads}
    if positions != 1024:  # the shape of models built before this option stays the same
        shape["positions"] = positions
    if marker.exists():
        built = json.loads(marker.read_text())
        if built.get("version") == VERSION and built.get("shape", shape) == shape:
            return path
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = _tokenizer()
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    marker.write_text(json.dumps({"version": VERSION, "random_weights": True, "shape": shape}))
    return path


def is_tiny_model(directory: str | Path) -> bool:
    """Whether ``directory`` holds the random-weights model (its output is gibberish)."""
    return (Path(directory) / MARKER).exists()


def _tokenizer() -> Any:  # a transformers tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Only printable ASCII in the vocabulary (anything else encodes as the unknown token):
    # every token the random model picks then decodes to whole characters.
    bpe = Tokenizer(models.BPE(unk_token=UNKNOWN))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=[END, UNKNOWN], show_progress=False
    )
    printable = string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
    bpe.train_from_iterator([*CORPUS.split("\n"), printable], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=END,
        eos_token=END,
        unk_token=UNKNOWN,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m agents.tiny DIR  (builds the tiny test model into DIR)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    print(build_tiny_model(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
