"""The dmt half of the peer benchmarks, without any peer: the benchmark-local `mlp` column
grows a ttc store through the real add-task, and the peer venvs stay out of dmt's own
dependencies. (The peers themselves need their venvs, built on first use with network
access, so no test runs them.)"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
BENCHMARKS = ROOT / "benchmarks"


def test_mlp_column_from_a_benchmark_plugin_grows_a_ttc_store(tmp_path: Path) -> None:
    """The `mlp` backbone registers through `dmt_register_backbones`; its stages are PNN's
    column (Linear + ReLU on the flattened image) and ttc connects them."""
    from dmtcore.hooks.host import create_plugin_host
    from dmtcore.operations import add_task, init_store
    from dmtcore.store.checkpoint import load_model
    from dmtcore.store.directory import Store
    from dmtcore.tasks.names import InputSpec
    from dmtcore.train.loop import TrainSettings

    host = create_plugin_host([str(BENCHMARKS / "_mlp_backbone.py")])
    column = host.kinds.backbone("mlp").build(InputSpec(1, 8, 8), {"layers": 3, "width": 16})
    assert column.feature_shapes == [(16,), (16,), (16,)]
    store = tmp_path / "store"
    init_store(store, host, InputSpec(1, 8, 8), backbone="mlp", connection="ttc")
    settings = TrainSettings(epochs=1, device="cpu")
    for task in ("digits.class", "digits.even"):
        result = add_task(store, task, host, settings, notify=lambda message: None)
        assert 0.0 <= result.metrics[task]["accuracy"] <= 1.0
    opened = Store.open(store)
    model = load_model(opened, opened.manifest(), host.kinds)
    assert list(model.tasks) == ["digits.class", "digits.even"]
    assert model.part("digits.even", "column").feature_shapes == [(100,), (100,)]


def test_peer_requirements_stay_out_of_dmt() -> None:
    """Avalanche and LibMTL are installed only in their own venvs, from their own requirements
    files, after the very torch and torchvision dmt pins; dmt's package declares no peer."""
    spec = importlib.util.spec_from_file_location("_peers", BENCHMARKS / "_peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    text = (BENCHMARKS / "peers" / "requirements-avalanche.txt").read_text()
    with_deps, no_deps = peers._requirements(text)
    assert no_deps == ["avalanche-lib==0.6.0"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {d for d in project["dependencies"] if d.startswith(("torch==", "torchvision=="))}
    assert set(peers.TORCH) == pinned and len(pinned) == 2
    for name in ("avalanche", "libmtl"):
        with_deps, _ = peers._requirements(
            (BENCHMARKS / "peers" / f"requirements-{name}.txt").read_text()
        )
        assert not [r for r in with_deps if r.startswith(("torch==", "torchvision=="))]
    extras = project.get("optional-dependencies", {}).values()
    declared = [*project["dependencies"], *(d for extra in extras for d in extra)]
    assert not [d for d in declared if "avalanche" in d.lower()]
    assert "benchmarks/.venvs/" in (ROOT / ".gitignore").read_text().splitlines()
