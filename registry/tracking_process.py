"""MLflow tracking in a helper process, so that a process that trains never imports MLflow.

Importing MLflow and opening its store costs about 2 CPU seconds, as much as training a small
task for ten epochs; in the training process those seconds add to every tracked command's wall
time. Imported in a thread they hold the GIL against the training loop, which slows by as much
(measured: docs/mlflow.md, "Overhead"). So a tracked operation
starts `python -m dmt_registry.tracking_process` as its first step, before torch is imported:
the child imports MLflow on another core while the parent imports torch and loads the data,
then runs the very `MlflowTracker` hooks, which the parent sends it as JSON lines.

What waits for the child:
- `dmt_run_started` waits for the checks that can refuse an operation (server down, a model
  name taken, no permission), so a refusal still stops it before any training, with the same
  error and exit code; the run itself is opened while the parent trains (a failure to open it
  is raised at the first epoch's end, before anything is committed);
- `dmt_epoch_end` does not wait: a failure met while logging an epoch is raised at the next
  epoch's end (training stops there and nothing is committed), or, after the last epoch, is a
  warning once the version is committed;
- `dmt_run_finished` and `dmt_run_failed` wait, so the command ends only once the run and the
  registry version are in MLflow, as before.

The child answers on a copy of its stdout and points its fd 1 at stderr, so nothing a library
prints can garble the answers; its stderr is relayed to the parent's. It ignores Ctrl-C and
SIGTERM (the parent stops at a safe point and reports the interruption itself). A parent that
dies without closing leaves the child an end of file: it marks the open run KILLED and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dmtcore import errors
from dmtcore.errors import DmtError, TrackingError
from dmtcore.hooks.runinfo import EpochReport, RunInfo, RunResult
from dmtcore.hooks.specs import hookimpl
from dmtcore.runtime import faults
from dmtcore.runtime.progress import Stage

MODULE = "dmt_registry.tracking_process"
# What the tracker imports at a run's start, and what publishing imports at its end: the child
# imports the first set before the first message, the second while the parent trains.
FIRST_IMPORTS = ("mlflow.tracking", "mlflow.entities")
DATABASE_STORE = "mlflow.store.tracking.sqlalchemy_store"  # for a database URI, not a server
PUBLISH_IMPORTS = ("mlflow.pyfunc", "mlflow.models", "mlflow.types")
ENDED = object()  # the child's answers ended (it exited)


def _plain(value: Any) -> Any:
    """JSON for what a hook record holds besides JSON's own types: paths, numpy scalars."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot send {type(value).__name__} to the tracking process")


def _line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, default=_plain) + "\n").encode()


def _error_record(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


def _raised(record: dict[str, str]) -> DmtError:
    """The child's DmtError again, of the same class (and so the same exit code)."""
    kind = getattr(errors, record["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, DmtError)):
        kind = TrackingError
    return kind(record["message"])


class TrackingProcess:
    """The lifecycle hooks of `MlflowTracker`, run by a child process started at construction.

    Hand it to the plugin host like the tracker itself; `close()` when the operations are
    done (it waits for the child to end, and kills one that never started a run)."""

    def __init__(
        self,
        tracking_uri: str,
        embedded: bool = False,
        register: bool = True,
        notify: Callable[[str], None] = lambda message: None,
        verbose: bool = False,
        store: Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.notify = notify
        self.run_open = False
        self.started_runs = 0
        # A publish the server refused after the commit (a fork, a permission), as the
        # tracker reports it: the caller raises it with the version (`ModelStore`).
        self.refused: DmtError | None = None
        self._pending_error: DmtError | None = None
        self._previews: tempfile.TemporaryDirectory[str] | None = None
        config = {
            "tracking_uri": tracking_uri,
            "embedded": embedded,
            "register": register,
            "verbose": verbose,
            "store": None if store is None else str(Path(store).resolve()),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", MODULE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # The tests' crash points kill the process that trains, never its tracker.
            env={k: v for k, v in os.environ.items() if k != faults.ENV},
        )
        self._answers: queue.Queue[Any] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read_answers, daemon=True),
            threading.Thread(target=self._relay_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- the hooks -------------------------------------------------------------------------

    @hookimpl
    def dmt_run_started(self, run: RunInfo) -> None:
        from dmt_registry.tracking import system_info

        record = dataclasses.asdict(run)  # the child says it connects (`check_run`)
        record["params"] = {**run.params, **system_info()}
        record["extra"] = {}
        self._call("run_started", {"run": record})
        self.run_open = True
        self.started_runs += 1

    @hookimpl
    def dmt_epoch_end(self, run: RunInfo, report: EpochReport) -> None:
        self._drain()
        self._raise_pending()
        self._send("epoch_end", {"report": dataclasses.asdict(report)})

    @hookimpl
    def dmt_run_finished(self, run: RunInfo, result: RunResult) -> None:
        self.run_open = False
        record = dataclasses.asdict(result)
        try:
            self._call("run_finished", {"result": record, "previews": self._preview_files(run)})
        finally:
            self._discard_previews()
        self._raise_pending()  # an epoch's logging that failed after the last check

    @hookimpl
    def dmt_run_failed(self, run: RunInfo, error: BaseException) -> None:
        if not self.run_open:
            return
        self.run_open = False
        self._pending_error = None
        self._call(
            "run_failed",
            {"error": _error_record(error), "interrupted": isinstance(error, KeyboardInterrupt)},
        )

    def close(self) -> None:
        """End the child: politely after runs (it finishes what it was sent), at once when it
        never started one (it may still be importing MLflow)."""
        if self.process.poll() is None and self.started_runs == 0:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                self.process.stdin.write(_line({"hook": "close"}))
                self.process.stdin.flush()
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        self._drain()
        self._discard_previews()

    # -- talking to the child --------------------------------------------------------------

    def _send(self, hook: str, payload: dict[str, Any]) -> None:
        try:
            self.process.stdin.write(_line({"hook": hook, **payload}))
            self.process.stdin.flush()
        except OSError as exc:
            raise self._ended() from exc

    def _call(self, hook: str, payload: dict[str, Any]) -> None:
        """Send, then wait for this hook's answer (notices shown as they come); raise the
        child's error."""
        self._send(hook, payload)
        while True:
            answer = self._answers.get()
            if answer is ENDED:
                raise self._ended()
            if self._handled(answer):
                continue
            if answer["done"] == hook:
                if answer.get("error"):
                    raise _raised(answer["error"])
                if answer.get("refused"):  # the publish was refused; the commit stands
                    self.refused = _raised(answer["refused"])
                return
            self._keep_error(answer)  # an epoch's, answered before this hook's

    def _drain(self) -> None:
        """Show the notices and keep the errors of answers that came without waiting."""
        while True:
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                return
            if answer is ENDED:
                self._answers.put(ENDED)  # a later wait must see the end too
                return
            if not self._handled(answer):
                self._keep_error(answer)

    def _keep_error(self, answer: dict[str, Any]) -> None:
        """The first error of an answer nobody waited for, to raise at the next check."""
        if answer.get("error") and self._pending_error is None:
            self._pending_error = _raised(answer["error"])

    def _raise_pending(self) -> None:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error

    def _handled(self, answer: dict[str, Any]) -> bool:
        """A notice is shown here, in the caller's thread; True for one."""
        if "notify" not in answer:
            return False
        text = answer["notify"]
        self.notify(Stage(text) if answer.get("stage") else text)
        return True

    def _ended(self) -> TrackingError:
        code = self.process.wait()
        return TrackingError(
            f"the MLflow tracking process for {self.tracking_uri!r} ended unexpectedly "
            f"(exit code {code}); pass --no-tracking to train without it"
        )

    def _read_answers(self) -> None:
        for line in self.process.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(ENDED)

    def _relay_stderr(self) -> None:
        for line in self.process.stderr:
            sys.stderr.write(line.decode(errors="replace"))
            sys.stderr.flush()

    def _preview_files(self, run: RunInfo) -> dict[str, str]:
        """The run's preview images (PIL), as PNG files the child logs."""
        previews = run.extra.get("previews") or {}
        if not previews:
            return {}
        self._previews = tempfile.TemporaryDirectory(prefix="dmt-previews-")
        files = {}
        for task, image in previews.items():
            path = Path(self._previews.name) / f"{task}.png"
            image.save(path)
            files[task] = str(path)
        return files

    def _discard_previews(self) -> None:
        if self._previews is not None:
            self._previews.cleanup()
            self._previews = None


# -- the child ---------------------------------------------------------------------------


def serve(config: dict[str, Any], inbox: IO[bytes], answers: IO[bytes]) -> None:
    """Run the hooks the parent sends until it closes; answer every waited-for one."""
    import importlib

    from dmt_registry.tracking import MlflowTracker

    def answer(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # a parent that is gone hears nothing
            answers.write(_line(message))
            answers.flush()

    def notify(message: str) -> None:
        answer({"notify": str(message), "stage": isinstance(message, Stage)})

    messages: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:  # the parent's writes never wait for the child's imports
        for line in inbox:
            messages.put(json.loads(line))
        messages.put(None)

    threading.Thread(target=read, daemon=True).start()
    remote = config["tracking_uri"].split(":", 1)[0] in ("http", "https", "databricks")
    for name in FIRST_IMPORTS if remote else (*FIRST_IMPORTS, DATABASE_STORE):
        importlib.import_module(name)
    tracker = MlflowTracker(
        config["tracking_uri"],
        embedded=config["embedded"],
        register=config["register"],
        notify=notify,
        verbose=config["verbose"],
        system=dict,  # the parent sends its own system information in the parameters
    )
    if config.get("store"):
        tracker.warm_up(Path(config["store"]))
    run: RunInfo | None = None
    warmed = False
    while True:
        message = messages.get()
        if message is None or message["hook"] == "close":
            if message is None and run is not None and tracker.run_id is not None:
                tracker.mark_killed(tracker.run_id, "marked by its tracking process")
            return
        hook = message["hook"]
        try:
            if hook == "run_started":
                run = RunInfo(
                    **{**message["run"], "store_path": Path(message["run"]["store_path"])}
                )
                experiment = tracker.check_run(run)
                answer({"done": hook})  # nothing refused it: the parent trains meanwhile
                try:
                    tracker.open_run(run, experiment)
                except Exception as exc:  # raised in the parent at the next epoch's end
                    answer({"done": "open_run", "error": _error_record(exc)})
                    run = None
                if config["register"] and not warmed:
                    for name in PUBLISH_IMPORTS:  # while the parent trains
                        importlib.import_module(name)
                    warmed = True
                continue
            elif hook == "epoch_end":
                tracker.dmt_epoch_end(run=run, report=EpochReport(**message["report"]))
            elif hook == "run_finished":
                record = message["result"]
                result = RunResult(**{**record, "manifest_path": Path(record["manifest_path"])})
                run.extra["previews"] = message["previews"]
                tracker.dmt_run_finished(run=run, result=result)
                run = None
                if tracker.refused is not None:
                    refused, tracker.refused = tracker.refused, None
                    answer({"done": hook, "refused": _error_record(refused)})
                    continue
            elif hook == "run_failed":
                error = message["error"]
                failure = (
                    KeyboardInterrupt()
                    if message["interrupted"]
                    else type(error["type"], (Exception,), {})(error["message"])
                )
                tracker.dmt_run_failed(run=run, error=failure)
                run = None
        except Exception as exc:
            if hook == "run_started":
                run = None  # no run of its own to end if the parent goes
            answer({"done": hook, "error": _error_record(exc)})
        else:
            answer({"done": hook})


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answers
    sys.stdout = sys.stderr
    serve(json.loads(sys.argv[1]), sys.stdin.buffer, answers)
    # Everything is logged and committed by now: skip the interpreter's teardown of MLflow,
    # SQLAlchemy and the rest (about half a second the parent would wait for).
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
