"""A team's server under load: PUBLISHERS processes publishing and READERS processes reading one
registered model for a bounded time, against `mlflow server` on PostgreSQL with basic-auth.

    python benchmarks/team_load.py                       # starts its own server (PostgreSQL
                                                         # from tests/team_server.py), 60 s
    python benchmarks/team_load.py --tracking-uri http://host:5000   # a server of yours
                                                         # (MLFLOW_TRACKING_USERNAME/PASSWORD)

Each publisher loops: `dmt pull models:/NAME@current` into a fresh directory, `add-task` a new
tiny task (1 epoch on 40 generated 8×8 images, so the registry, not training, is the load),
publish. A publish refused as a fork (someone else published since the pull) is counted as
such and the publisher pulls again: that is dmt's way forward. Each reader loops over `dmt
pull` of `@current` and `mlflow.pyfunc.load_model` + predict of `@current`. Afterwards:

- lost versions: a registry version a publisher was told it published that is not there;
- broken aliases: `current` not resolving, or its `dmt.parent_version` chain missing a link;
- off the chain: a version tagged published that `current`'s chain does not contain (work
  that a later publish dropped: what fork detection exists to prevent);
- errors: anything a process met other than a refused fork, with its first line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
"""Tiny tasks for the load benchmark: load.<anything> is "is pixel k bright?" on 40 8x8 images."""
import zlib
import torch
from torch.utils.data import TensorDataset
from dmtcore import TaskData, TaskSpec, hookimpl

def datasets_for(name):
    def datasets(request):
        g = torch.Generator().manual_seed(7)
        images = torch.rand(40, 1, 8, 8, generator=g)
        k = zlib.crc32(name.encode()) % 64
        labels = (images.flatten(1)[:, k] > 0.5).long()
        return TaskData(TensorDataset(images[:24], labels[:24]), TensorDataset(images[24:], labels[24:]), deterministic=True)
    return datasets

@hookimpl
def dmt_register_tasks(kinds):
    import os
    for name in os.environ.get("DMT_LOAD_TASKS", "").split(","):
        if name:
            kinds.add_task(TaskSpec(name, "tiny load-test task", (1, 8, 8), "binary", datasets_for(name)))
'''
FAST = {"epochs": 1, "batch_size": 64}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def task_names(role_index: int, count: int = 400) -> list[str]:
    return [f"load.p{role_index}.t{k}" for k in range(count)]


def publisher(args: argparse.Namespace, work: Path) -> dict:
    from dmtcore.api import open_store, pull
    from dmtcore.errors import ForkError

    done = {"published": [], "forks_refused": 0, "errors": [], "attempts": 0}
    tasks = iter(task_names(args.index))
    round_ = 0
    while time.time() < args.deadline:
        round_ += 1
        folder = work / f"p{args.index}-{round_}"
        try:
            pull(f"models:/{args.model}@current", args.tracking_uri, folder, [args.plugin])
            store = open_store(folder, plugins=[args.plugin], tracking_uri=args.tracking_uri)
            done["attempts"] += 1
            store.add_task(next(tasks), **FAST)
        except ForkError:
            done["forks_refused"] += 1
            continue
        except Exception as exc:
            done["errors"].append(first_line(exc))
            continue
        done["published"].append(json.loads((folder / "publications.json").read_text()))
    done["published"] = [
        p["published"][max(p["published"], key=int)]["version"] for p in done["published"]
    ]
    return done


def reader(args: argparse.Namespace, work: Path) -> dict:
    import mlflow.pyfunc
    import numpy as np

    from dmtcore.api import pull

    done = {"pulls": 0, "loads": 0, "errors": []}
    batch = np.random.default_rng(args.index).random((4, 1, 8, 8), dtype=np.float32)
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    round_ = 0
    while time.time() < args.deadline:
        round_ += 1
        try:
            if round_ % 2:
                target = work / f"r{args.index}-{round_}"
                pull(f"models:/{args.model}@current", args.tracking_uri, target, [args.plugin])
                done["pulls"] += 1
            else:
                model = mlflow.pyfunc.load_model(f"models:/{args.model}@current")
                frame = model.predict(batch)
                assert len(frame) == 4, frame
                done["loads"] += 1
        except Exception as exc:
            done["errors"].append(first_line(exc))
    return done


def child(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"dmt-load-{args.role}{args.index}-"))
    os.environ["DMT_LOAD_TASKS"] = ",".join(
        name for i in range(args.publishers) for name in task_names(i)
    )
    try:
        result = (publisher if args.role == "publisher" else reader)(args, work)
    except Exception:
        result = {"errors": [traceback.format_exc()]}
    Path(args.report).write_text(json.dumps(result))


def check_registry(client, model: str, published: list[str]) -> dict:
    """Lost versions, broken aliases, and published versions off current's chain."""
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{model}'")}
    lost = sorted(set(published) - set(versions), key=int)
    broken, chain = 0, []
    try:
        number = str(client.get_model_version_by_alias(model, "current").version)
    except Exception:
        return {
            "lost_versions": lost,
            "broken_aliases": 1,
            "off_chain": [],
            "versions": len(versions),
        }
    while number.isdigit():
        if number not in versions:
            broken += 1
            break
        chain.append(number)
        number = versions[number].tags.get("dmt.parent_version", "")
    marked = [n for n, v in versions.items() if v.tags.get("dmt.publish") == "published"]
    off = sorted(set(marked) - set(chain), key=int)
    forks = sum(v.tags.get("dmt.publish") == "fork" for v in versions.values())
    return {
        "lost_versions": lost,
        "broken_aliases": broken,
        "off_chain": off,
        "versions": len(versions),
        "chain": len(chain),
        "fork_versions": forks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tracking-uri", default=None, help="a server of yours [default: start one]"
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="of the server this starts")
    parser.add_argument("--quick", action="store_true", help="2 publishers, 2 readers, 8 s")
    parser.add_argument("--json", default=None)
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plugin", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args)
        return
    if args.quick:
        args.seconds, args.publishers, args.readers = 8, 2, 2
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    folder = Path(tempfile.mkdtemp(prefix="dmt-team-load-"))
    if args.tracking_uri:
        run(args, folder)
        return
    sys.path.insert(0, str(ROOT))
    from tests import team_server as team

    with team.team_server(folder, workers=args.workers) as server:
        team.add_user(server, "loader", "loader-password-1")
        os.environ.update(
            {"MLFLOW_TRACKING_USERNAME": "loader", "MLFLOW_TRACKING_PASSWORD": "loader-password-1"}
        )
        args.tracking_uri = server.url
        run(args, folder)


def run(args: argparse.Namespace, folder: Path) -> None:
    from mlflow.tracking import MlflowClient

    from dmtcore.api import open_store

    plugin = folder / "load_tasks.py"
    plugin.write_text(PLUGIN)
    # dmt answers a server that does not reply within 10 s with an error, which is right for a
    # user but on a 2-core machine running this whole team times out a loaded server's slow
    # replies: the workers wait up to a minute (a value the caller set wins).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    os.environ["DMT_LOAD_TASKS"] = ",".join(
        name for i in range(args.publishers) for name in task_names(i)
    )
    model = f"load-{secrets.token_hex(3)}"
    base = folder / "base"
    store = open_store(base, plugins=[str(plugin)], tracking_uri=args.tracking_uri)
    store.init("1x8x8", model_name=model)
    store.add_task(task_names(0)[-1], **FAST)  # models:/MODEL/1, a task no publisher adds
    deadline = time.time() + args.seconds
    roles = [("publisher", i) for i in range(args.publishers)] + [
        ("reader", i) for i in range(args.readers)
    ]
    children = []
    for role, index in roles:
        report = folder / f"{role}{index}.json"
        command = [
            sys.executable, __file__, "--role", role, "--index", str(index),
            "--deadline", str(deadline), "--model", model, "--plugin", str(plugin),
            "--report", str(report), "--tracking-uri", args.tracking_uri,
            "--publishers", str(args.publishers),
        ]  # fmt: skip
        children.append(
            (role, report, subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
        )
    started = time.time()
    reports, tracebacks = [], 0
    for role, report, process in children:
        _, stderr = process.communicate(timeout=args.seconds + 600)
        tracebacks += stderr.count("Traceback")
        data = json.loads(report.read_text()) if report.exists() else {"errors": ["no report"]}
        reports.append((role, data))
    wall = time.time() - started
    published = [v for role, d in reports if role == "publisher" for v in d.get("published", [])]
    client = MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    checked = check_registry(client, model, published)
    result = {
        "seconds": args.seconds,
        "wall_seconds": round(wall, 1),
        "publishers": args.publishers,
        "readers": args.readers,
        "publishes": len(published),
        "publish_attempts": sum(d.get("attempts", 0) for r, d in reports if r == "publisher"),
        "forks_refused": sum(d.get("forks_refused", 0) for r, d in reports if r == "publisher"),
        "pulls": sum(d.get("pulls", 0) for r, d in reports if r == "reader"),
        "loads": sum(d.get("loads", 0) for r, d in reports if r == "reader"),
        "errors": [e for _, d in reports for e in d.get("errors", [])],
        "tracebacks_on_stderr": tracebacks,
        **checked,
    }
    result["reads"] = result["pulls"] + result["loads"]
    print(
        f"{args.publishers} publishers, {args.readers} readers, {args.seconds:.0f} s "
        f"(wall {wall:.0f} s) against {args.tracking_uri}:\n"
        f"  publishes {result['publishes']} of {result['publish_attempts']} attempts "
        f"({result['forks_refused']} refused as forks), reads {result['reads']} "
        f"({result['pulls']} pulls, {result['loads']} pyfunc loads)\n"
        f"  errors {len(result['errors'])}, lost versions {len(result['lost_versions'])}, "
        f"broken aliases {result['broken_aliases']}, published versions off current's chain "
        f"{len(result['off_chain'])}, registry versions {result['versions']} "
        f"({result.get('fork_versions', 0)} tagged fork), chain length {result.get('chain', 0)}"
    )
    for error in result["errors"][:5]:
        print(f"  error: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
