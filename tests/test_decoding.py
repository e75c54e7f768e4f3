"""A generation moved mid-way continues token-exactly (issue 23's foundation, agents/decoding.py).

Two decoders over two separately loaded copies of the tiny model stand for two agents; the
state between them goes through the mesh's real envelope (sealed, the cache as tensor
attachments, opened on the other side), so what is compared is what a move would deliver.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the llm extra (scripts/setup dev installs it)")

from agents.decoding import Decoder, StateRefused, capture  # noqa: E402
from agents.generation import GenerationParams  # noqa: E402
from agents.models import load_causal_lm  # noqa: E402
from agents.tiny import build_random_model, build_tiny_model  # noqa: E402
from mesh import Message  # noqa: E402
from mesh.core.envelope import open_sealed, seal  # noqa: E402
from mesh.core.wire import Kind  # noqa: E402

pytestmark = pytest.mark.slow  # processes, sockets or models: not in --fast

TOKENS = 24
KEY = bytes(range(32))
GREEDY = GenerationParams(max_new_tokens=TOKENS)
SAMPLED = GenerationParams(max_new_tokens=TOKENS, temperature=0.9, top_p=0.9, seed=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def agents(model_dir):
    """Two decoders, each over its own copy of the model, as two agents would hold."""
    return two_agents(model_dir)


def two_agents(directory) -> list[Decoder]:
    decoders = []
    for _ in range(2):
        tokenizer, model, _ = load_causal_lm(directory, "cpu")
        decoders.append(Decoder(model, tokenizer))
    return decoders


def prompt(decoder: Decoder) -> list[int]:
    return decoder.tokenizer("Customer service answers questions about")["input_ids"]


def run(decoder: Decoder, generation, steps: int | None = None) -> list[str]:
    """Step until the end (or ``steps`` tokens); the text pieces it would send."""
    pieces = []
    while generation.finish is None and (steps is None or steps > 0):
        decoder.step(generation)
        pieces.append(decoder.piece(generation))
        steps = None if steps is None else steps - 1
    return pieces


def over_the_wire(state: dict) -> dict:
    """The state sealed into a SEALED message and opened: what the target receives."""
    frames = seal(b"\0" * 8, KEY, 1, 0, [Message(Kind.REQUEST, 1, name="resume", body=state)])
    assert len(frames) == (4 if state["keys"] is not None else 2)  # the tensors: attachments
    received = [bytes(frame) for frame in frames]
    return open_sealed(received, KEY).messages[0].body


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded-sampling"])
@pytest.mark.parametrize("moved_after", [1, 2, TOKENS // 2, TOKENS - 1])
def test_a_moved_generation_continues_token_for_token(agents, params, moved_after):
    source, target = agents
    whole = source.start(prompt(source), params)
    whole_pieces = run(source, whole)
    assert whole.produced == TOKENS and whole.finish == "length"

    moving = source.start(prompt(source), params)
    before = run(source, moving, steps=moved_after)
    resumed = target.restore(over_the_wire(capture(source, moving)))
    after = run(target, resumed)
    assert resumed.ids == whole.ids  # every token, none twice, in order
    assert before + after == whole_pieces
    assert "".join(before + after) == target.text(whole)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded-sampling"])
def test_a_gpt2_small_sized_model_moves_token_for_token_too(tmp_path_factory, params):
    """GPT-2 small's shape (12 layers, 768 wide, 12 heads; random weights, the tiny
    vocabulary): a cache of realistic layout and size per token, moved at three points."""
    directory = build_random_model(
        tmp_path_factory.mktemp("gpt2-small"), layers=12, width=768, heads=12
    )
    source, target = two_agents(directory)
    whole = source.start(prompt(source), params)
    run(source, whole)
    for moved_after in (1, TOKENS // 2, TOKENS - 1):
        moving = source.start(prompt(source), params)
        run(source, moving, steps=moved_after)
        state = over_the_wire(capture(source, moving))
        assert tuple(state["keys"].shape) == (12, 1, 12, len(moving.ids) - 1, 64)
        resumed = target.restore(state)
        run(target, resumed)
        assert resumed.ids == whole.ids, moved_after


def test_a_generation_moved_before_its_first_token_is_prefilled_where_it_lands(agents):
    source, target = agents
    whole = source.start(prompt(source), SAMPLED)
    run(source, whole)
    fresh = source.start(prompt(source), SAMPLED)
    resumed = target.restore(over_the_wire(capture(source, fresh)))
    run(target, resumed)
    assert resumed.ids == whole.ids


def test_unseeded_sampling_moves_its_generator_with_it(agents):
    source, target = agents
    params = GenerationParams(max_new_tokens=TOKENS, temperature=1.0)
    moving = source.start(prompt(source), params)
    run(source, moving, steps=5)
    state = over_the_wire(capture(source, moving))
    twin = source.restore(state)  # the same state continued here, for comparison
    resumed = target.restore(state)
    run(source, twin)
    run(target, resumed)
    assert resumed.ids == twin.ids and resumed.produced == TOKENS


def test_another_models_state_is_refused_before_anything_is_used(agents, model_dir):
    source, _ = agents
    tokenizer, model, _ = load_causal_lm(model_dir, "cpu")
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3  # one weight differs: another model
    other = Decoder(model, tokenizer)
    assert other.fingerprint != source.fingerprint
    moving = source.start(prompt(source), GREEDY)
    run(source, moving, steps=3)
    with pytest.raises(StateRefused, match="another model"):
        other.restore(over_the_wire(capture(source, moving)))


def test_a_damaged_or_inconsistent_state_is_refused(agents):
    source, target = agents
    moving = source.start(prompt(source), SAMPLED)
    run(source, moving, steps=4)
    state = over_the_wire(capture(source, moving))
    keys = state["keys"].clone()
    keys.view(-1)[0] += 1.0  # one number of the cache
    damaged = [
        {**state, "keys": keys},
        {**state, "ids": state["ids"][:-1]},
        {**state, "ids": [*state["ids"][:-1], (state["ids"][-1] + 1) % 100]},
        {**state, "digest": "0" * 64},
        {**state, "model": "0" * 64},
        {**state, "version": 2},
        {**state, "params": {**state["params"], "max_new_tokens": 4}},  # nothing left
        {**state, "sent": 10_000},
        {**state, "values": state["values"][:, :, :, :-1]},
    ]
    for bad in damaged:
        with pytest.raises(StateRefused):
            target.restore(bad)
    assert run(target, target.restore(state))  # the intact state still goes on


def test_an_ended_generation_cannot_be_captured(agents):
    source, _ = agents
    done = source.start(prompt(source), GenerationParams(max_new_tokens=2))
    run(source, done)
    with pytest.raises(Exception, match="ended"):
        capture(source, done)


def test_a_replica_loaded_from_elsewhere_has_the_same_fingerprint(agents, model_dir, tmp_path):
    import shutil

    copy = shutil.copytree(model_dir, tmp_path / "copy")
    tokenizer, model, _ = load_causal_lm(copy, "cpu")
    assert Decoder(model, tokenizer).fingerprint == agents[0].fingerprint
