"""What the runtime stamps on each message it sends: the wall-clock time and a msg id.

The protocol core never reads the clock nor picks an id (callers pass both in); this is the
one place the runtime gets them.
"""

from __future__ import annotations

import itertools
import os
import time

# msg ids are unique per sender: a random 48-bit start per process, then a counter
_ids = itertools.count(int.from_bytes(os.urandom(6), "big"))


def now_ms() -> int:
    """The wall-clock time in milliseconds since the epoch, as envelopes carry it."""
    return time.time_ns() // 1_000_000


def next_msg_id() -> int:
    """A msg id no other message from this process has had."""
    return next(_ids)
