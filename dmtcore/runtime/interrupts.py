"""Ctrl-C and SIGTERM, turned into a stop at the next safe point.

A signal raising KeyboardInterrupt at an arbitrary instruction could land inside an MLflow
database write and leave the run unreportable. So the first signal only asks to stop: training
checks the request between steps (and predict between batches) and raises KeyboardInterrupt
there, where everything can be cleaned up and reported. A second signal stops at once.
"""

from __future__ import annotations

import signal
from typing import Any

_stop_requested = False


def request_stop(signum: int, frame: Any) -> None:
    global _stop_requested
    if _stop_requested:
        raise KeyboardInterrupt
    _stop_requested = True


def install() -> None:
    """Route SIGINT and SIGTERM through `request_stop` (the CLI does this at start-up)."""
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def check() -> None:
    """Raise KeyboardInterrupt if a stop was asked for."""
    if _stop_requested:
        raise KeyboardInterrupt
