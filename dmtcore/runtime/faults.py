"""Named crash points, for the tests that kill dmt mid-operation.

With `DMT_CRASH_AT=POINT` (or `POINT:N` for its N-th passage) in the environment, the process
kills itself with SIGKILL when it reaches that point: no cleanup, no `finally`, exactly like a
power cut or the OOM killer. Without the variable a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DMT_CRASH_AT"
_passages: dict[str, int] = {}


def crash_point(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _passages[point] = _passages.get(point, 0) + 1
    if _passages[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
