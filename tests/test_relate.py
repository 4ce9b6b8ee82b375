"""`dmt relate`: task grouping by response contrast maps (DMT §2) recovers known relatedness,
reads a stored column without changing the store, logs its own MLflow run, and refuses bad
requests in one line with the store untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import fingerprint

SHAPES = ["shapes.kind", "shapes.colour", "shapes.size", "shapes.position", "shapes.red-circle"]
DENSE_PLUGIN = Path(__file__).with_name("dense_toy_plugin.py")


def test_red_circle_is_nearest_to_kind_and_colour(run_cli, tmp_path: Path) -> None:
    """The composite is made of exactly two attributes: a fresh column trained one epoch on
    8×8 shapes finds them as its two nearest tasks, and groups it with one of them."""
    store = tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x8x8")
    before = fingerprint(store)
    result = run_cli("relate", *SHAPES, "--store", store, "--no-tracking", "--json")
    report = json.loads(result.stdout)
    assert report["features"]["source"] == "fresh"
    assert set(report["nearest"]["shapes.red-circle"][:2]) == {"shapes.kind", "shapes.colour"}
    assert any({"shapes.red-circle", "shapes.colour"} <= set(group) for group in report["groups"])
    cooccurrence = report["cooccurrence"][SHAPES.index("shapes.red-circle")]
    assert cooccurrence[0] > 0.4 and cooccurrence[1] > 0.4  # shares images: phi is shown
    assert fingerprint(store) == before  # the fresh column is never committed
    assert "training a fresh dmt-cnn column" in result.stderr


def test_stored_column_is_read_and_logged_to_mlflow(
    run_cli, store_copy: Path, mlflow_template: Path, tmp_path: Path
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    versions = {k: v for k, v in fingerprint(store_copy).items() if k.startswith("versions")}
    plot = tmp_path / "relate.png"
    tasks = ["digits.even", "digits.prime", "digits.loop"]
    result = run_cli(
        "relate", *tasks, "--store", store_copy, "--column", "digits.class", "--stage", "4",
        "--groups", "2", "--plot", plot, "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    features = report["features"]
    assert (features["source"], features["column"], features["stage"]) == (
        "store",
        "digits.class",
        4,
    )
    assert len(report["groups"]) == 2 and sorted(
        m for group in report["groups"] for m in group
    ) == sorted(tasks)
    distance = np.array(report["distance"])
    assert np.allclose(distance, distance.T) and np.all((distance >= 0) & (distance <= 1))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    current = {k: v for k, v in fingerprint(store_copy).items() if k.startswith("versions")}
    assert current == versions

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=report["tracking_uri"])
    run = client.get_run(report["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dmt.operation"] == "relate"
    assert run.data.params["features.column"] == "digits.class"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "relatedness")}
    assert logged == {"relatedness/relatedness.json", "relatedness/relatedness.png"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["digits.even", "digits.nope"], 3, "unknown task 'digits.nope'"),
        (["digits.even"], 11, "give two or more distinct tasks"),
        (["digits.even", "digits.even"], 11, "give two or more distinct tasks"),
        (["digits.even", "digits.prime", "--stage", "9"], 11, "stage 9 does not exist"),
        (["digits.even", "digits.prime", "--stage", "0"], 11, "valid: 1 to 6"),
        (["digits.even", "digits.prime", "--threshold", "0"], 11, "threshold must be"),
        (["digits.even", "digits.prime", "--groups", "3"], 11, "--groups must be 1 to 2"),
        (["digits.even", "digits.prime", "--column", "digits.odd"], 3, "for --column"),
        (
            ["digits.even", "toyd.depth", "-p", str(DENSE_PLUGIN)],
            11,
            "task 'toyd.depth' is depth",
        ),
    ],
)
def test_bad_requests_fail_in_one_line(
    run_cli, store_copy: Path, args: list[str], code: int, message: str
) -> None:
    before = fingerprint(store_copy)
    result = run_cli("relate", *args, "--store", store_copy, expect=code)
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert fingerprint(store_copy) == before


def test_column_of_an_absent_store_is_refused(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "relate", "digits.even", "digits.prime", "--store", tmp_path / "none",
        "--column", "digits.even", expect=11,
    )  # fmt: skip
    assert "needs a stored task" in result.stderr
    assert not (tmp_path / "none").exists()


def test_distance_ignores_which_label_is_positive() -> None:
    """'large' and 'small' are one question: a map and its negation are at distance 0, maps
    on disjoint features at 1 (they share nothing), the same map at 0."""
    from dmtcore.analysis.task_grouping import map_distance, normalised, phi

    a = normalised(np.array([1.0, -1.0, 0.0, 0.0]))
    b = normalised(np.array([0.0, 0.0, 2.0, 1.0]))
    assert map_distance(a, a) == 0 and map_distance(a, -a) == 0
    assert map_distance(a, b) == pytest.approx(1.0)
    labels = np.array([0, 1, 1, 0, 1, 0])
    assert phi(labels[:, None].astype(float), 1 - labels[:, None].astype(float)) == pytest.approx(
        -1
    )


def test_a_contrast_matched_with_its_sign_flipped_is_marked_not() -> None:
    import numpy as np

    from dmtcore.analysis.task_grouping import ContrastMaps, distance_matrix, normalised

    up = normalised(np.array([1.0, 2.0, 0.0, -1.0]))
    other = normalised(np.array([0.0, 1.0, 1.0, 1.0]))
    binary = ContrastMaps("t.binary", ["yes"], np.stack([up]))
    colours = ContrastMaps("t.colour", ["red", "green"], np.stack([other, -up]))
    distance, via = distance_matrix([binary, colours])
    assert distance[0, 1] == 0.0
    assert via[0][1] == ["yes", "not green"] and via[1][0] == ["green", "not yes"]


def test_the_table_for_people_shows_distances_nearest_and_groups(run_cli, store_copy: Path) -> None:
    result = run_cli(
        "relate", "digits.even", "digits.prime", "digits.large", "--store", store_copy,
        "--column", "digits.class", "--groups", "2", "--no-tracking",
    )  # fmt: skip
    out = result.stdout
    assert out.startswith("Response contrast maps from the column of 'digits.class'")
    assert "Distance (0 = the same contrast" in out and "\nNearest\n" in out
    assert "Groups (average linkage, cut at 2 groups)" in out and "  2. " in out
