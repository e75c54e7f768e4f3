"""A generation as explicit state, advanced one token at a time, that can move.

``model.generate`` keeps a generation's state inside one call: the key/value cache, the
random generator, how much text has been sent. Nothing of it can be handed to another
agent mid-way, so moving work means recomputing it. Here a :class:`Generation` holds all
of it, :meth:`Decoder.step` adds one token, and :func:`capture` / :meth:`Decoder.restore`
turn the state into a mesh body (the cache as two tensor attachments) and back, so an agent
serving the same model continues the generation token for token as if it had never moved.

Exactness rests on three things, each checked: the same weights, generation config and
tokenizer (a :func:`fingerprint` in the state, refused before anything is computed when it
differs), the cache moved bit for bit (a digest over it and the token ids), and the
sampling generator's own state moved with it (each generation samples from a private
``torch.Generator``, never the process-wide one). The continuation is then bit-identical
where the arithmetic is: the same device type, dtype, kernels and thread count (CPU
results differ in the last bits between torch thread counts, which can change a token).

The cache covers every token but the last one chosen: that token is fed at the next step.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mesh import Blob, InvalidArgument

from .generation import GenerationParams, TextAssembler

STATE_VERSION = 1
MAX_STATE_TOKENS = 1 << 16  # token ids a state may carry: bounds what a peer can send
LOCAL = ("_name_or_path", "transformers_version")  # where and by what it was loaded: not the model


class StateRefused(InvalidArgument):
    """A generation state this agent will not continue: another model, a damaged or
    inconsistent state, or one it cannot run. Raised before any of it is used."""


def fingerprint(model: Any, tokenizer: Any) -> str:
    """What must match for a generation to continue elsewhere token-exactly: the model's
    configuration, every parameter (name, dtype, shape, bytes) and the tokenizer's
    vocabulary. A hex digest; computed once per agent (a pass over the weights)."""
    digest = hashlib.blake2b(digest_size=32)
    for config in (model.config, getattr(model, "generation_config", None)):
        fields = {k: v for k, v in (config.to_dict() if config else {}).items() if k not in LOCAL}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    vocabulary = sorted(tokenizer.get_vocab().items())
    digest.update(json.dumps(vocabulary).encode())
    return digest.hexdigest()


@dataclass
class Generation:
    """One generation in progress: everything needed to produce its next token."""

    ids: list[int]  # the prompt's tokens, then the generated ones
    prompt_tokens: int
    params: GenerationParams
    generator: torch.Generator  # this generation's sampling randomness, nobody else's
    cache: Any = None  # the model's key/value cache for ids[:-1]; None before the first step
    assembler: TextAssembler = field(default_factory=TextAssembler)
    finish: str | None = None  # "eos", "length" or "stop" once it has ended

    @property
    def produced(self) -> int:
        return len(self.ids) - self.prompt_tokens

    @property
    def generated(self) -> list[int]:
        return self.ids[self.prompt_tokens :]


class Decoder:
    """One model, one token at a time (in the agent's worker thread: it blocks)."""

    def __init__(self, model: Any, tokenizer: Any, model_fingerprint: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = model_fingerprint or fingerprint(model, tokenizer)
        # what model.generate would take from the model's generation config: every end
        # token (an instruct model may have several), top-k, a repetition penalty
        rules = getattr(model, "generation_config", None)
        ends = getattr(rules, "eos_token_id", None)
        if ends is None:
            ends = tokenizer.eos_token_id
        self.eos = frozenset(
            e for e in (ends if isinstance(ends, list) else [ends]) if e is not None
        )
        self.top_k = getattr(rules, "top_k", None) or 0
        self.repetition_penalty = getattr(rules, "repetition_penalty", None) or 1.0
        # transformers 5 names the cache argument (and output) ``cache``; 4 ``past_key_values``
        takes = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in takes else "past_key_values"
        # logits for the last position only: a long prompt's would be vocabulary-sized each
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}

    def start(self, prompt_ids: list[int], params: GenerationParams) -> Generation:
        """A generation of ``prompt_ids`` that has produced nothing yet."""
        if not prompt_ids:
            raise InvalidArgument("a generation needs at least one prompt token")
        generator = torch.Generator(device=self.model.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        return Generation(
            list(prompt_ids), len(prompt_ids), params, generator, None, TextAssembler(params.stop)
        )

    def step(self, generation: Generation) -> int:
        """Compute and append the next token; returns it. Sets ``finish`` when it ended."""
        if generation.finish is not None:
            raise InvalidArgument("this generation has ended")
        fed = generation.ids if generation.cache is None else generation.ids[-1:]
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([fed], device=self.model.device),
                use_cache=True,
                **{self._cache_argument: generation.cache},
                **self._last_only,
            )
            generation.cache = out["cache"] if "cache" in out else out["past_key_values"]
            token = self._choose(out.logits[:, -1], generation)
        generation.ids.append(token)
        if generation.produced >= generation.params.max_new_tokens:
            generation.finish = "length"  # as model.generate says it, an end token or not
        elif token in self.eos:
            generation.finish = "eos"
        return token

    def _choose(self, logits: torch.Tensor, generation: Generation) -> int:
        """The next token, by transformers' own processors in generate's order: the
        repetition penalty, then greedy at temperature 0, else temperature, top-k, top-p and
        a draw with this generation's own generator."""
        params = generation.params
        scores = logits.float()
        if self.repetition_penalty != 1.0:
            seen = torch.tensor([generation.ids], device=scores.device)
            scores = RepetitionPenaltyLogitsProcessor(self.repetition_penalty)(seen, scores)
        if params.temperature == 0:
            return int(torch.argmax(scores[0]))
        scores = TemperatureLogitsWarper(params.temperature)(None, scores)
        if self.top_k:
            scores = TopKLogitsWarper(self.top_k)(None, scores)
        if params.top_p < 1.0:
            scores = TopPLogitsWarper(params.top_p)(None, scores)
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities[0], 1, generator=generation.generator))

    def text(self, generation: Generation) -> str:
        """The text generated so far."""
        return self.tokenizer.decode(generation.generated, skip_special_tokens=True)

    def piece(self, generation: Generation) -> str:
        """What of the text may be sent now (stop strings and split characters held
        back); a stop string ends the generation."""
        assembler = generation.assembler
        text = self.text(generation)
        piece = assembler.finish(text) if generation.finish else assembler.feed(text)
        if assembler.stopped:
            generation.finish = "stop"
        return piece

    def restore(self, state: dict[str, Any]) -> Generation:
        """The generation a :func:`capture` body describes, checked against this model
        first: StateRefused if it is another model's, damaged or inconsistent."""
        return _restore(self, state)


def capture(decoder: Decoder, generation: Generation) -> dict[str, Any]:
    """``generation`` as a mesh body: plain fields, the cache as two tensors (keys and
    values of every layer, stacked) sent as attachments, the generator's state as a Blob,
    and a digest over all of it. The generation must not have ended."""
    if generation.finish is not None:
        raise InvalidArgument("an ended generation has nothing left to move")
    keys, values = (None, None) if generation.cache is None else _stacked(generation.cache)
    generator_state = generation.generator.get_state().numpy().tobytes()
    params = generation.params
    return {
        "version": STATE_VERSION,
        "model": decoder.fingerprint,
        "ids": list(generation.ids),
        "prompt_tokens": generation.prompt_tokens,
        "params": {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop),
            "seed": params.seed,
        },
        "sent": generation.assembler.sent,
        "keys": keys,
        "values": values,
        "generator": Blob(generator_state),
        "digest": _digest(generation.ids, keys, values, generator_state),
    }


# --------------------------------------------------------------------------- internals


def _stacked(cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of every layer as two tensors ``[layers, batch, heads, tokens,
    dim]``, on the CPU (what attachments carry)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(not hasattr(layer, "keys") for layer in layers):
        raise InvalidArgument("only a model with a plain key/value cache can move mid-way")
    keys = torch.stack([layer.keys for layer in layers]).to("cpu").contiguous()
    values = torch.stack([layer.values for layer in layers]).to("cpu").contiguous()
    return keys, values


def _digest(ids: list[int], keys: Any, values: Any, generator_state: bytes) -> str:
    """Over everything a continuation depends on but the parameters (checked on their
    own): a state damaged anywhere is refused, not continued into garbage."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(json.dumps(ids).encode())
    for tensor in (keys, values):
        if tensor is None:  # moved before its first token: no cache yet
            digest.update(b"none")
            continue
        digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    digest.update(generator_state)
    return digest.hexdigest()


def _restore(decoder: Decoder, state: dict[str, Any]) -> Generation:
    try:
        return _checked_restore(decoder, state)
    except StateRefused:
        raise
    except Exception as exc:  # a state nothing above foresaw: still refused, never run
        raise StateRefused(f"the state does not fit: {type(exc).__name__}: {exc}") from None


def _checked_restore(decoder: Decoder, state: dict[str, Any]) -> Generation:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise StateRefused(f"not a generation state of version {STATE_VERSION}")
    if state.get("model") != decoder.fingerprint:
        raise StateRefused("the state is another model's (or another tokenizer's)")
    ids, prompt_tokens = state.get("ids"), state.get("prompt_tokens")
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_STATE_TOKENS
        or not all(type(i) is int and 0 <= i < decoder.model.config.vocab_size for i in ids)
        or type(prompt_tokens) is not int
        or not 0 < prompt_tokens <= len(ids)
    ):
        raise StateRefused("the state's token ids are not valid for this model")
    params = _params(state.get("params"), len(ids) - prompt_tokens)
    keys, values, blob = state.get("keys"), state.get("values"), state.get("generator")
    prefilled = keys is not None or values is not None
    if prefilled:
        keys, values = _tensor(keys), _tensor(values)
        _check_cache_shape(decoder, keys, values, len(ids) - 1)  # before hashing any of it
    elif len(ids) != prompt_tokens:
        raise StateRefused("the state has tokens but no cache")
    if not isinstance(blob, Blob):
        raise StateRefused("the state has no generator state")
    generator_state = bytes(blob)
    if state.get("digest") != _digest(ids, keys, values, generator_state):
        raise StateRefused("the state is damaged: its digest does not match")
    cache = _cache(decoder, keys, values, len(ids) - 1) if prefilled else None
    generator = torch.Generator(device=decoder.model.device)
    try:
        generator.set_state(torch.frombuffer(bytearray(generator_state), dtype=torch.uint8))
    except (RuntimeError, ValueError) as exc:
        raise StateRefused(f"the generator state does not fit: {exc}") from None
    sent = state.get("sent")
    assembler = TextAssembler(params.stop)
    generation = Generation(list(ids), prompt_tokens, params, generator, cache, assembler)
    text = decoder.text(generation)
    if type(sent) is not int or not 0 <= sent <= len(text):
        raise StateRefused("the state's sent text is longer than its text")
    assembler.sent = sent
    return generation


def _params(fields: Any, produced: int) -> GenerationParams:
    if not isinstance(fields, dict):
        raise StateRefused("the state has no parameters")
    try:
        params = GenerationParams.from_body(fields, limit=MAX_STATE_TOKENS)
    except InvalidArgument as exc:
        raise StateRefused(f"the state's parameters: {exc}") from None
    if produced >= params.max_new_tokens:
        raise StateRefused("the state has no tokens left to generate")
    return params


def _tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise StateRefused("the state's cache is not a tensor")
    return value


def _check_cache_shape(
    decoder: Decoder, keys: torch.Tensor, values: torch.Tensor, tokens: int
) -> None:
    """The moved tensors must be exactly what this model makes for ``tokens`` tokens:
    ``[layers, 1, key/value heads, tokens, head size]`` in the model's dtype."""
    config = decoder.model.config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
    expected = (config.num_hidden_layers, 1, kv_heads, tokens, head_size)
    dtype = next(decoder.model.parameters()).dtype
    if (
        tuple(keys.shape) != expected
        or tuple(values.shape) != expected
        or keys.dtype != dtype
        or values.dtype != dtype
    ):
        raise StateRefused(
            f"the state's cache {tuple(keys.shape)} {keys.dtype} does not fit this model "
            f"({expected}, {dtype})"
        )


def _cache(decoder: Decoder, keys: torch.Tensor, values: torch.Tensor, tokens: int) -> Any:
    """A cache for this model from the moved tensors (their shape checked already)."""
    from transformers import DynamicCache

    config = decoder.model.config
    device = decoder.model.device
    return DynamicCache(
        [(keys[i].to(device), values[i].to(device)) for i in range(keys.shape[0])],
        config=config,
    )
