"""What a new user meets first: finding a task (`dmt tasks` grouping, filter, unknown names),
`--store` naming a file, `python -m dmt`, and a relations plot whose colours show the gates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import fingerprint, toy_plugin


def listed(run_cli, *args: object) -> list[dict]:
    return json.loads(run_cli("tasks", *args, "--json").stdout)


def test_tasks_list_ready_data_first_grouped_by_plugin(
    run_cli, tmp_path: Path, write_plugin
) -> None:
    """Built-in data first, then on disk (NYUv2's folders made here), then a plugin that does
    not say (the toy), then downloads (CelebA's 120 tasks) and data to fetch by hand."""
    data = tmp_path / "data"
    (data / "nyuv2" / "train").mkdir(parents=True)
    (data / "nyuv2" / "val").mkdir()
    toy = write_plugin("toy", toy_plugin())
    rows = listed(run_cli, "--data-dir", data, "-p", toy)
    plugins = list(dict.fromkeys(r["plugin"] for r in rows))
    blocks = [r["plugin"] for r in rows]
    assert blocks == sorted(blocks, key=plugins.index), "each plugin's tasks are together"
    data_of = {r["plugin"]: r["data"] for r in rows}
    assert data_of["digits"] == "built-in" and data_of["nyuv2"] == "on disk"
    assert data_of["toy"] is None and data_of["celeba"] == "needs --download"
    assert plugins.index("digits") < plugins.index("nyuv2") < plugins.index("toy")
    assert plugins.index("toy") < plugins.index("celeba")
    assert rows[0]["name"] == "digits.class"

    table = run_cli("tasks", "--data-dir", tmp_path / "none").stdout.splitlines()
    assert table[0].split()[:4] == ["task", "plugin", "output", "data"]
    nyuv2 = next(line for line in table if line.startswith("nyuv2.depth"))
    assert " missing " in nyuv2


def test_tasks_filter_by_part_of_a_task_or_plugin_name(run_cli) -> None:
    assert [r["name"] for r in listed(run_cli, "digits")] == [
        "digits.class", "digits.even", "digits.large", "digits.prime", "digits.loop",
        "digits.curved",
    ]  # fmt: skip
    gray = listed(run_cli, "celeba-gray")
    assert len(gray) == 40 and all(r["name"].startswith("celeba-gray.") for r in gray)
    assert {r["plugin"] for r in listed(run_cli, "DEPTH", "shapes")} == {
        "nyuv2", "scenes", "shapes",
    }  # fmt: skip
    result = run_cli("tasks", "digts", "--json")
    assert json.loads(result.stdout) == []
    assert not result.stderr.startswith("Error: ")  # not an error: an empty listing
    assert "no task or plugin name contains 'digts'" in result.stderr
    assert "Did you mean 'digits'" in result.stderr


def test_an_unknown_task_names_only_the_close_matches(run_cli, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = run_cli("add-task", "digits.evn", "--store", store, "--no-tracking", expect=3)
    assert result.stderr.startswith("Error: unknown task 'digits.evn'. Did you mean 'digits.even'")
    assert result.stderr.count("\n") == 1
    assert "celeba" not in result.stderr and len(result.stderr) < 250
    assert "tasks are known; 'dmt tasks' lists them." in result.stderr
    assert not store.exists()
    short = run_cli("add-task", "even", "--store", store, "--no-tracking", expect=3).stderr
    assert "Did you mean 'digits.even'?" in short
    few = run_cli("init", "--store", store, "--backbone", "resnet19", expect=3).stderr
    assert "Did you mean 'resnet18'" in few
    assert few.rstrip().endswith("timm:MODEL, vgg16, vgg16_bn.")  # a short list is still given


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--store", "{file}"),
        ("--store", "{file}", "history"),
        ("init", "--store", "{file}"),
        ("add-task", "digits.even", "--store", "{file}", "--no-tracking"),
    ],
)
def test_store_naming_a_file_is_not_a_store(run_cli, tmp_path: Path, args: tuple) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a store\n")
    result = run_cli(*(a.format(file=path) for a in args), expect=5)
    assert result.stderr == (
        f"Error: {str(path)!r} is a file, not a dmt store (a store is a directory); give the "
        "store's directory with --store\n"
    )
    assert path.read_text() == "not a store\n"


def test_python_m_dmt_is_the_dmt_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dmt", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: dmt [OPTIONS] COMMAND [ARGS]...")
    assert "add-task" in result.stdout


def test_the_plot_colours_span_the_links_not_the_own_column(
    store_copy: Path, run_cli, tmp_path: Path, monkeypatch
) -> None:
    """TTC's own gate is 1.0 by definition; the learned gates are about 0.1. The colour scale
    must span the learned ones, and the own cells be drawn apart (grey)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure: (figures.append(figure), close(figure)))
    path = tmp_path / "relations.png"
    before = fingerprint(store_copy)
    payload = json.loads(
        run_cli("connections", "--store", store_copy, "--plot", path, "--json").stdout
    )
    links = [v for s in payload["stages"] for i, row in enumerate(s["matrix"])
             for j, v in enumerate(row) if v is not None and i != j]  # fmt: skip
    assert max(links) < 0.5
    panels = [a for a in figures[0].axes if a.images]
    assert len(panels) == len(payload["stages"])
    for axis in panels:
        low, high = axis.images[0].get_clim()
        assert (low, high) == pytest.approx((min(links), max(links)))
        assert np.diag(np.ma.getmaskarray(axis.images[0].get_array())).all()
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    grey = (np.abs(pixels.astype(int) - 217) <= 2).all(1)
    assert grey.sum() > 1000, "the own cells are drawn grey"
    assert fingerprint(store_copy) == before
