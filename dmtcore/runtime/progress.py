"""What an operation says while it works, and whether it may draw progress bars.

Operations report through one `notify` callable. A `Stage` says what the operation is doing
now ("loading the data of digits.even"), so that no stage of over a second passes in silence;
a front end may leave stages out (the CLI does under --json). Anything else (a warning, a note
about the feature cache) is a plain string and is always shown.

Bars are drawn only on a terminal (tqdm's own check) and only while `bars_allowed()`: the CLI
turns them off under --json, where stderr is for warnings alone. Kept free of torch, so that
the CLI can import it before deciding what to load.
"""

from __future__ import annotations

_state = {"bars": True}


class Stage(str):
    """A notice of what an operation is doing now; a `str`, so every `notify` accepts it."""


def allow_bars(allowed: bool) -> None:
    """Whether progress bars may be drawn from now on (the CLI decides once per command)."""
    _state["bars"] = allowed


def bars_allowed() -> bool:
    return _state["bars"]


def bar_disabled(main_rank: bool = True) -> bool | None:
    """tqdm's `disable`: None lets tqdm draw on a terminal only; True never draws."""
    return None if main_rank and bars_allowed() else True


def duration(seconds: float) -> str:
    """A short human duration: '0.4s', '12s', '3m05s', '1h02m'."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
