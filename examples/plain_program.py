"""Embed a mesh node in a plain program: no event loop, no async.

Run a mesh first (for example ``mesh discovery &`` and ``mesh run echo --name echo-1 &``),
then ``python examples/plain_program.py``.
"""

from __future__ import annotations

import sys

from mesh import MeshError, SyncNode


def main() -> int:
    try:
        with SyncNode("plain-program") as node:  # discovery: $MESH_DISCOVERY, else 127.0.0.1:7700
            node.handler("add", lambda body: sum(body))  # others may call us too
            reply = node.request("echo-1", "echo", {"from": "a plain program"}, timeout=5)
            print(f"echo-1 answered {reply}")
            for chunk in node.stream("echo-1", "echo_stream", ["one", "two", "three"]):
                print(f"streamed {chunk}")
    except MeshError as exc:
        print(f"plain-program: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
