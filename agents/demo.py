"""The customer-service mesh, live: what ``./scripts/demo`` runs.

    python -m agents.demo [--model DIR] [--questions N] [--converse TURNS] [--tokens N]

Starts, each as its own process: a discovery node, an embedding agent (MiniLM), three
answering LLM agents with different specialities (billing, technical support, shipping), the
router, the intake agent and a logger that writes every consultation to a JSONL file. Then,
from this process, it asks a handful of customer questions through intake, prints each answer
as it streams in with the route the router chose, and has two LLM agents converse. Last,
billing is drained (``mesh drain billing``) in the middle of an answer: the generation moves
to another agent serving the same model and the answer goes on from there. It ends with a
per-hop latency table (its "max gap" column is the longest pause the customer saw between
two chunks: the drained answer's is the move) and the messaging overhead per streamed token.

Without ``--model`` it builds a tiny random-weights model locally (no download), so the
answers are gibberish and the output says so; the routing is real (MiniLM embeddings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from mesh import MeshDirectory, MeshError, MeshProcess, Node

from .tiny import build_tiny_model, is_tiny_model

SPECIALISTS = {
    "billing": "Billing: invoices, charges, refunds and payment methods.",
    "tech": "Technical support: devices that will not start, network and Wi-Fi problems, "
    "software updates and error messages.",
    "shipping": "Shipping: parcel tracking, delivery dates, lost packages and returns.",
}
QUESTIONS = [
    ("I was charged twice on my last invoice, can I get a refund?", "billing"),
    ("My laptop will not start after the software update.", "tech"),
    ("Where is my parcel? It was due yesterday.", "shipping"),
    ("Which payment methods do you accept?", "billing"),
    ("The Wi-Fi keeps dropping every few minutes.", "tech"),
]
DRAINED = ("My invoice shows a charge I do not recognise, what is it?", "billing")
# long enough to be mid-answer when the drain comes: the hops in between buffer up to a
# window each (the router's read of billing, intake's read of the router)
DRAIN_TOKENS = 200
HELD_AFTER = 3  # text chunks the customer reads before billing is drained
DRAIN_SEED = 1  # with it the tiny model answers all DRAIN_TOKENS (others may end sooner)
START_TIMEOUT_S = 120.0  # model loading on a busy 2-core machine
ANSWER_TIMEOUT_S = 120.0
PROGRESS_EVERY_S = 10.0  # a line while agents are still loading


def one_line(text: str) -> str:
    """Model text as it can be printed inside a line: whitespace as a space, any other
    control character as ``\\xNN``. The tiny model's gibberish has tabs, newlines and
    escape codes that would otherwise break the answer's line and the layout after it."""
    return "".join(" " if ch.isspace() else ch if ch.isprintable() else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agents.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="causal LM directory (default: tiny)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="how many to ask")
    parser.add_argument("--tokens", type=int, default=24, help="max new tokens per answer")
    parser.add_argument("--converse", type=int, default=4, help="conversation turns (0: none)")
    parser.add_argument("--log", default=None, help="consultations JSONL (default: in MESH_HOME)")
    parser.add_argument(
        "--drain", action=argparse.BooleanOptionalAction, default=True,
        help="drain billing mid-answer at the end (default: yes)",
    )  # fmt: skip
    return parser


class Demo:
    def __init__(self, args: argparse.Namespace, mesh: MeshDirectory, model: Path) -> None:
        self.args = args
        self.mesh = mesh
        self.model = model
        self.log = Path(args.log) if args.log else mesh.path / "consultations.jsonl"
        self.children: list[MeshProcess] = []
        self.rows: list[dict[str, Any]] = []
        self.token_delays: list[float] = []  # model produced -> this process received (s)
        self.token_gaps: list[float] = []  # between two tokens at the model (s)

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, flush=True)

    # ------------------------------------------------------------------ processes

    def start(self) -> str:
        discovery = self._spawn("discovery", "discovery", "--bind", "tcp://127.0.0.1:0")
        url = discovery.endpoint()
        self.say(f"discovery node up at {url}")
        run = ("run", "--discovery", url, "--heartbeat", "2")
        self._spawn("embedder", *run, "agents.embedding:EmbeddingAgent", "--name", "embedder")
        for name, description in SPECIALISTS.items():
            self._spawn(
                name,
                *run,
                "agents.llm:LLMAgent",
                "--name",
                name,
                "--model",
                str(self.model),
                "--description",
                description,
            )
        self._spawn("router", *run, "agents.router:RouterAgent", "--name", "router")
        self._spawn("intake", *run, "agents.service:IntakeAgent", "--name", "intake")
        self._spawn(
            "logger",
            *run,
            "agents.service:LoggerAgent",
            "--name",
            "logger",
            "--path",
            str(self.log),
        )
        self._wait_for_agents(self.children[1:])
        return url

    def _wait_for_agents(self, agents: list[MeshProcess]) -> None:
        """Say each agent's readiness as it comes (they load models side by side, for tens
        of seconds the first time) and, while some are still loading, which ones."""
        self.say(f"starting {len(agents)} agents, each its own process, loading its model")
        started = time.monotonic()
        with ThreadPoolExecutor(len(agents)) as pool:
            waiting = {pool.submit(child.endpoint, START_TIMEOUT_S): child for child in agents}
            try:
                while waiting:
                    done, _ = wait(waiting, timeout=PROGRESS_EVERY_S, return_when=FIRST_COMPLETED)
                    elapsed = time.monotonic() - started
                    for future in done:
                        child = waiting.pop(future)
                        future.result()  # RuntimeError naming the child and its last word
                        self.say(f"  {child.name:<9} up (pid {child.process.pid}, {elapsed:.0f} s)")
                    if not done:
                        names = ", ".join(sorted(c.name for c in waiting.values()))
                        self.say(f"  still loading after {elapsed:.0f} s: {names}")
            except BaseException:
                self.stop()  # the other waits end when their processes do
                raise

    def _spawn(self, name: str, *args: str) -> MeshProcess:
        log = self.mesh.path / "logs" / f"{name}.log"
        child = MeshProcess(self.mesh, *args, name=name, log=log)
        self.children.append(child)
        return child

    def stop(self) -> None:
        """Stop the agents together, then discovery (so their LEAVEs reach it)."""
        if not self.children:
            return
        self.say(f"stopping {len(self.children)} processes")
        discovery, *agents = self.children
        self.children = []
        stopped = MeshProcess.stop_mesh(discovery, agents[::-1])
        named = [f"{child.name} {status}" for child, status in stopped]
        self.say(f"stopped every process (exit statuses: {', '.join(named)})")

    # ------------------------------------------------------------------ talking

    async def talk(self, url: str) -> None:
        async with Node("customer", discovery=url, mesh=self.mesh) as node:
            peers = sorted(p.name for p in await node.peers() if p.name != node.name)
            self.say(f"mesh members: {', '.join(peers)}")
            table = await node.request("router", "table", timeout=30)
            deadline = time.monotonic() + START_TIMEOUT_S
            while len(table) < len(SPECIALISTS):  # the router embeds the cards as agents join
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the router knows only {', '.join(table) or 'nobody'}")
                await asyncio.sleep(0.2)
                table = await node.request("router", "table", timeout=30)
            self.say("the router's candidates: " + ", ".join(table))
            for index, (question, expected) in enumerate(QUESTIONS[: self.args.questions], 1):
                await self.ask(node, index, question, expected)
            if self.args.converse:
                await self.converse(node)
            asked = min(self.args.questions, len(QUESTIONS))
            if self.args.drain:
                await self.drain_mid_answer(node, url, asked + 1)
            await self.check_log(node, asked + bool(self.args.drain))

    async def ask(
        self,
        node: Node,
        index: int,
        question: str,
        expected: str,
        tokens: int | None = None,
        pause: Any = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Ask through intake and print the answer as it streams; ``pause`` (a coroutine
        function) runs after ``HELD_AFTER`` text chunks, the stream held meanwhile (its
        chunks then say nothing of the mesh's delay per token, and are not counted)."""
        self.say(f"\nQ{index}: {question}")
        sent = time.perf_counter()
        row: dict[str, Any] = {"q": f"Q{index}", "gap": 0.0}
        last_t: float | None = None
        last_seen: float | None = None
        texts = 0
        body = {"question": question, "max_new_tokens": tokens or self.args.tokens,
                "temperature": 0.8, "seed": index if seed is None else seed}  # fmt: skip
        done: dict[str, Any] = {}
        async for chunk in node.stream("intake", "ask", body, timeout=ANSWER_TIMEOUT_S, window=2):
            now = time.time()
            if "route" in chunk and not chunk.get("done"):
                mark = "as expected" if chunk["route"] == expected else f"expected {expected}"
                self.say(f"  -> {chunk['route']} (score {chunk['score']:.2f}, {mark}): ", end="")
                row.update(
                    route=chunk["route"], score=chunk["score"], hop1=chunk["intake_to_route_ms"]
                )
                row.update(embed=chunk["route_ms"], hop2=chunk["answer_first_chunk_ms"])
            elif "text" in chunk:
                seen = time.perf_counter()
                if "ttft" not in row:
                    row["ttft"] = (seen - sent) * 1000
                    first_at = seen
                if last_seen is not None:
                    row["gap"] = max(row["gap"], (seen - last_seen) * 1000)
                last_seen = seen
                self.say(one_line(chunk["text"]), end="")
                texts += 1
                if texts == HELD_AFTER and pause is not None:
                    await pause()
                    last_seen = time.perf_counter()  # the customer's own pause is not the mesh's
                if pause is None:
                    self.token_delays.append(now - chunk["t"])
                if last_t is not None and pause is None:
                    self.token_gaps.append(chunk["t"] - last_t)
                last_t = chunk["t"]
            elif chunk.get("done"):
                span = max(time.perf_counter() - first_at, 1e-9) if "ttft" in row else 0.0
                row.update(tokens=chunk["tokens"], model_tps=chunk["tokens_per_s"])
                row["client_tps"] = (chunk["tokens"] - 1) / span if span else 0.0
                done = chunk
        self.say()
        self.rows.append(row)
        return done

    async def drain_mid_answer(self, node: Node, url: str, index: int) -> None:
        """``mesh drain billing`` while billing is in the middle of an answer (held there:
        the customer reads no further until billing says it is draining). The generation
        moves, cache and sampler, to another agent serving the same model, and the answer
        goes on; billing's process exits 0."""
        log = self.mesh.path / "logs" / "drain.log"
        drain: MeshProcess | None = None

        async def drain_billing() -> None:
            nonlocal drain
            self.say(" [mesh drain billing] ", end="")
            drain = MeshProcess(self.mesh, "drain", "billing", "--discovery", url,
                                name="drain", log=log)  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    if (await node.request("billing", "status", timeout=30))["draining"]:
                        return
                except MeshError:  # drained already, and gone
                    return
                await asyncio.sleep(0.05)
            raise RuntimeError("billing did not begin to drain")

        question, expected = DRAINED
        done = await self.ask(
            node, index, question, expected, DRAIN_TOKENS, drain_billing, DRAIN_SEED
        )
        if drain is None:  # a real model may end its answer first: nothing to show then
            self.say("(the answer ended before billing could be drained)")
            return
        said = await asyncio.to_thread(drain.next_line, ANSWER_TIMEOUT_S)
        drained = json.loads(said) if said.startswith("{") else {}
        status = await asyncio.to_thread(drain.process.wait, ANSWER_TIMEOUT_S)
        if status != 0 or not drained:
            raise RuntimeError(f"mesh drain billing failed ({status}): {log.read_text()[-300:]}")
        billing = next(child for child in self.children if child.name == "billing")
        exited = await asyncio.to_thread(billing.process.wait, ANSWER_TIMEOUT_S)
        gone = f"its process left the mesh, exit status {exited}"
        if "moved_to" not in done:  # it ended (an end token) before the move could come
            self.say(f"billing drained after the answer had ended: nothing to move ({gone})")
            return
        self.say(
            f"billing drained ({drained.get('moved', 0)} generation moved; {gone}): the "
            f"answer went on from token {done['moved_at']} on {done['moved_to']}, which "
            f"serves the same model ({done.get('tokens')} tokens in all; the customer's "
            "pause is its max gap below)"
        )

    async def converse(self, node: Node) -> None:
        self.say(f"\nbilling and tech converse for {self.args.converse} turns, through the mesh:")
        speaker = None
        body = {
            "with": "tech",
            "turns": self.args.converse,
            "opening": "A customer says the invoice for a broken router is wrong.",
            "max_new_tokens": min(self.args.tokens, 16),
            "temperature": 0.8,
            "seed": 7,
        }
        async for chunk in node.stream("billing", "converse", body, timeout=ANSWER_TIMEOUT_S):
            if "text" in chunk:
                if chunk["speaker"] != speaker:
                    speaker = chunk["speaker"]
                    self.say(f"\n  [{speaker}] ", end="")
                self.say(one_line(chunk["text"]), end="")
        self.say()

    async def check_log(self, node: Node, want: int) -> None:
        for _ in range(50):  # the last consultation may still be on its way: 5 s at most
            count = await node.request("logger", "count", timeout=10)
            if count["written"] >= want:
                break
            await asyncio.sleep(0.1)
        self.say(f"\nthe logger wrote {count['written']} consultations to {count['path']}")

    # ------------------------------------------------------------------ the report

    def report(self) -> None:
        self.say("\nper hop (ms): intake->route = intake until the route is known (router")
        self.say("embeds the question and ranks); router->answer = router's request until the")
        self.say("answering agent's first chunk; TTFT = this process until the first token")
        header = f"{'':<4}{'route':<10}{'score':>6}{'intake->route':>15}{'embed+rank':>12}"
        header += f"{'router->answer':>16}{'TTFT':>8}{'max gap':>9}{'tokens':>8}{'tok/s':>8}"
        self.say(header)
        for r in self.rows:
            line = f"{r['q']:<4}{r.get('route', '?'):<10}{r.get('score', 0):>6.2f}"
            line += f"{r.get('hop1', 0):>15.1f}{r.get('embed', 0):>12.1f}{r.get('hop2', 0):>16.1f}"
            line += f"{r.get('ttft', 0):>8.1f}{r.get('gap', 0):>9.1f}{r.get('tokens', 0):>8}"
            line += f"{r.get('client_tps', 0):>8.0f}"
            self.say(line)
        if self.token_delays:
            delays = sorted(d * 1000 for d in self.token_delays)
            p50 = statistics.median(delays)
            p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            gap = statistics.median(self.token_gaps) * 1000 if self.token_gaps else float("nan")
            self.say(
                f"messaging per streamed token (model -> router -> intake -> here, 3 sealed "
                f"hops): p50 {p50:.2f} ms, p99 {p99:.2f} ms; the model takes {gap:.2f} ms "
                f"per token (p50), so the mesh adds {p50 / gap:.0%} of a token's time"
            )
            if is_tiny_model(self.model):
                self.say(
                    "(the tiny model is unusually fast: a real one takes tens of ms per token, "
                    "against which the same delay is a few per cent; scripts/token-overhead)"
                )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    mesh = MeshDirectory.default()  # $MESH_HOME or ~/.agent-mesh, as for every command
    try:
        mesh.create()
    except (MeshError, OSError) as exc:  # a host that only verifies; a folder not writable
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"mesh directory: {mesh.path.absolute()} (keys, logs, the tiny model)", flush=True)
    if args.model is None:
        model = build_tiny_model(mesh.path / "models" / "tiny-gpt2")
    else:
        model = Path(args.model)
    if is_tiny_model(model):
        print(
            "model: a tiny GPT-2 with random weights, built locally. Its answers are gibberish:"
            " this shows the mesh (routing, streaming, logging), not a model. Use --model DIR "
            "for a real one.",
            flush=True,
        )
    demo = Demo(args, mesh, model)
    try:
        url = demo.start()
        asyncio.run(demo.talk(url))
        demo.report()
    except (MeshError, RuntimeError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
