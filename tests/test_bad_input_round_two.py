"""Bad inputs and faults of issue 30, as a user meets them: the exit code, one line naming the
value and what is valid, and the store left as it was.

1. A store path holding '?' or '%' keeps its MLflow database (and artifacts) inside it.
2. CURRENT naming a version without a manifest is a damaged store (exit 5), not an unknown name.
3. A named pipe or device given to `dmt predict` is said to be one, and never opened.
4. One pixel limit for every input format, read from a .npy file's header before any data.
"""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fingerprint

LIMIT = "above the limit of 50000000 pixels per image for every input format"


def one_error_line(result) -> str:
    """The one line a refusal prints on stderr (no traceback, no second line)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- 1. store paths holding '?' or '%' ---------------------------------------------------------


def test_an_ordinary_store_path_gives_the_same_uri_as_before(tmp_path: Path) -> None:
    from dmt_registry.tracking import default_tracking_uri

    for name in ("store", "my store", "dïgits-€", "a#b", "x@y:z"):
        path = tmp_path / name
        assert default_tracking_uri(path) == f"sqlite:///{path.resolve() / 'mlflow.db'}"


@pytest.mark.parametrize(
    "relative", ["a?b%41c", "x%41y/store", "p?q/r%2Fs?/t", "%", "?", "100%/ok"]
)
def test_a_uri_of_a_path_with_query_or_percent_opens_that_very_file(
    tmp_path: Path, relative: str
) -> None:
    """SQLAlchemy decodes the URI back to the path; the parent MLflow creates (the undecoded
    path's) is an ancestor free of '?' and '%', so nothing is made beside the store."""
    from sqlalchemy.engine import make_url

    from dmt_registry.tracking import default_tracking_uri

    store = tmp_path / relative
    uri = default_tracking_uri(store)
    url = make_url(uri)
    assert url.database == str(store.resolve() / "mlflow.db") and not url.query
    made_by_mlflow = Path(uri.removeprefix("sqlite:///")).parent
    assert not set("?%") & set(str(made_by_mlflow))
    assert store.resolve().is_relative_to(made_by_mlflow)


def test_a_store_named_with_query_and_percent_tracks_registers_and_pulls(
    tmp_path: Path, run_cli, monkeypatch
) -> None:
    """The commands of the issue, in the cwd: MLflow's migrations and registry work on a
    database inside 'a?b%41c', and nothing appears beside it (no 'a?bAc', 'a%3Fb...', 'file:')."""
    monkeypatch.chdir(tmp_path)
    name = "a?b%41c"
    run_cli("add-task", "digits.even", "--store", name, "--epochs", "1", "--batch-size", "64")
    store = tmp_path / name
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert (store / "mlflow.db").is_file()
    assert any((store / "mlartifacts").rglob("MLmodel"))

    registered = json.loads(run_cli("register", "--store", name, "--json").stdout)
    uri = registered["tracking_uri"]
    assert uri == f"sqlite:///{tmp_path}/a%3Fb%2541c%2Fmlflow.db"
    history = run_cli("history", "--store", name, "--json").stdout
    assert [v["version"] for v in json.loads(history)] == [2, 1]

    run_cli("pull", f"models:/{registered['model']}/1", "--store", "pulled", "--tracking-uri", uri)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "pulled"])
    assert (tmp_path / "pulled" / "CURRENT").read_text().strip() == "2"
    assert not (tmp_path / "pulled" / "mlflow.db").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert int(client.get_model_version_by_alias(name, "current").version) == 1


def test_a_store_under_a_percent_directory_keeps_its_database_inside(
    store_copy: Path, tmp_path: Path, run_cli
) -> None:
    """An ancestor with '%' (and the store's own '?'), for a store made without tracking."""
    parent = tmp_path / "x%41y"
    parent.mkdir()
    store = parent / "st?re"
    shutil.move(store_copy, store)
    siblings = sorted(p.name for p in tmp_path.iterdir())

    run_cli("register", "--store", store)

    assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    assert sorted(p.name for p in parent.iterdir()) == ["st?re"]
    assert (store / "mlflow.db").is_file()
    assert list((store / "mlartifacts").iterdir())


# -- 2. CURRENT naming a version without a manifest --------------------------------------------


def test_current_naming_a_missing_manifest_is_a_damaged_store(
    store_copy: Path, tmp_path: Path, run_cli
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8), np.float32))
    (store_copy / "versions" / "v000003.json").unlink()
    before = fingerprint(store_copy)

    for args in (
        ["status"],
        ["eval"],
        ["predict", tmp_path / "x.npy"],
        ["connections"],
        ["add-task", "digits.prime", "--no-tracking", "--epochs", "1"],
    ):
        result = run_cli(*args, "--store", store_copy, expect=5)
        line = one_error_line(result)
        assert line == (
            f"Error: store {str(store_copy)!r} is damaged: CURRENT names version 3, but "
            "versions/v000003.json is missing; versions that exist: 1, 2; run 'dmt verify "
            f"--store {store_copy}' to see every problem, and 'dmt rollback 2 --store "
            f"{store_copy}' to make version 2 current again"
        ), args
        assert fingerprint(store_copy) == before

    verify = run_cli("verify", "--store", store_copy, expect=5)
    assert "names version 3, which has no manifest" in verify.stdout + verify.stderr
    # The way out that the message names works.
    run_cli("rollback", "2", "--store", store_copy, "--no-tracking")
    assert json.loads(run_cli("status", "--store", store_copy, "--json").stdout)["version"] == 4


def test_current_naming_a_manifest_that_is_not_a_file(store_copy: Path, run_cli) -> None:
    manifest = store_copy / "versions" / "v000003.json"
    manifest.unlink()
    manifest.mkdir()
    line = one_error_line(run_cli("status", "--store", store_copy, expect=5))
    assert "CURRENT names version 3, but versions/v000003.json is not a regular file" in line


def test_current_naming_a_manifest_when_none_is_left(store_copy: Path, run_cli) -> None:
    for manifest in (store_copy / "versions").iterdir():
        manifest.unlink()
    line = one_error_line(run_cli("status", "--store", store_copy, expect=5))
    assert "CURRENT names version 3, but versions/v000003.json is missing" in line
    assert "no version has a manifest" in line and "restore versions/ from a backup" in line


def test_an_older_version_that_does_not_exist_is_still_an_unknown_name(
    store_copy: Path, run_cli
) -> None:
    (store_copy / "versions" / "v000001.json").unlink()
    result = run_cli("rollback", "1", "--store", store_copy, "--no-tracking", expect=3)
    assert "has no version 1; versions: 2, 3" in one_error_line(result)


# -- 3. inputs that are not regular files ------------------------------------------------------


@pytest.mark.timeout(120)  # a FIFO opened for reading would block here forever
@pytest.mark.parametrize("name", ["pipe.npy", "pipe.png", "pipe"])
def test_a_named_pipe_is_said_to_be_one_and_never_read(
    store_copy: Path, tmp_path: Path, run_cli, name: str
) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    image = tmp_path / "ok.png"
    Image.new("L", (8, 8), 128).save(image)
    before = fingerprint(store_copy)

    result = run_cli("predict", image, fifo, "--store", store_copy, expect=7)

    assert one_error_line(result) == (
        f"Error: input {str(fifo)!r} is a named pipe (FIFO), not a file; give image files "
        "(PNG, JPEG, ...) or .npy arrays"
    )
    assert fingerprint(store_copy) == before


@pytest.mark.timeout(120)
def test_links_to_a_pipe_a_device_or_nothing(store_copy: Path, tmp_path: Path, run_cli) -> None:
    os.mkfifo(tmp_path / "fifo")
    cases = {
        "to-fifo.npy": (tmp_path / "fifo", "is a named pipe (FIFO), not a file"),
        "to-null.png": (Path(os.devnull), "is a character device, not a file"),
        "dangling.png": (
            tmp_path / "gone.png",
            f"is a symbolic link to {str(tmp_path / 'gone.png')!r}, which does not exist",
        ),
    }
    for name, (target, message) in cases.items():
        (tmp_path / name).symlink_to(target)
        result = run_cli("predict", tmp_path / name, "--store", store_copy, expect=7)
        assert message in one_error_line(result), name
    device = run_cli("predict", os.devnull, "--store", store_copy, expect=7)
    assert f"input {os.devnull!r} is a character device, not a file" in device.stderr


# -- 4. one pixel limit for every format -------------------------------------------------------


def npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> Path:
    """A .npy file whose header declares `shape` and which holds no data (a few bytes)."""
    with path.open("wb") as file:
        np.lib.format.write_array_header_2_0(
            file, {"descr": descr, "fortran_order": False, "shape": shape}
        )
    return path


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 9000, 9000), (9000, 9000)),  # C×H×W: one image, as the issue's
        ((9000, 9000), (9000, 9000)),  # H×W
        ((2, 1, 8, 6_250_001), (8, 6_250_001)),  # N×C×H×W, 8 pixels above the limit
        ((2, 8000, 8000, 3), (8000, 8000)),  # channels-last N×H×W×C
        ((5, 7072, 7072), (7072, 7072)),  # N×H×W gray images
    ],
)
def test_a_npy_header_above_the_pixel_limit_is_refused_before_reading(
    store_copy: Path, tmp_path: Path, run_cli, shape, size
) -> None:
    path = npy_header_only(tmp_path / "big.npy", shape)
    assert path.stat().st_size < 200
    before = fingerprint(store_copy)

    line = one_error_line(run_cli("predict", path, "--store", store_copy, expect=7))

    pixels = size[0] * size[1]
    assert line == (
        f"Error: input {str(path)!r} is {pixels} pixels, {LIMIT} (images and .npy arrays "
        f"alike): {size[0]}×{size[1]} (H×W) per image; downscale it"
    )
    assert fingerprint(store_copy) == before


def test_a_real_npy_just_above_the_limit_allocates_nothing(
    store_copy: Path, tmp_path: Path, run_cli
) -> None:
    """A sparse file of the full size (50 MB apparent, a few KB on disk): refusing it costs no
    more memory than predicting one 8×8 image (reading it would take 200 MB of float32)."""
    path = tmp_path / "sparse.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(1, 1, 7072, 7072)).flush()
    assert path.stat().st_size > 50_000_000
    np.save(tmp_path / "small.npy", np.zeros((1, 8, 8), np.float32))
    run_cli("predict", tmp_path / "small.npy", "--store", store_copy)  # imports done

    def peak(*args) -> tuple[object, int]:
        tracemalloc.start()
        try:
            result = run_cli("predict", *args, "--store", store_copy, expect=None)
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    refused, refusing = peak(path)
    _, predicting = peak(tmp_path / "small.npy")  # loading the model: about 70 MB
    assert refused.exit_code == 7
    assert f"is 50013184 pixels, {LIMIT}" in one_error_line(refused)
    assert refusing < predicting + 10_000_000, (refusing, predicting)


def test_the_same_pixels_as_png_and_npy_meet_the_same_limit(
    store_copy: Path, tmp_path: Path, run_cli
) -> None:
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")  # a few KB compressed
    npy_header_only(tmp_path / "big.npy", (1, 9000, 9000), "|u1")
    messages = [
        one_error_line(run_cli("predict", tmp_path / name, "--store", store_copy, expect=7))
        for name in ("big.png", "big.npy")
    ]
    assert [m.replace(".png", ".npy") for m in messages] == [messages[1]] * 2
    assert f"is 81000000 pixels, {LIMIT}" in messages[0]


def test_other_image_formats_name_the_limit(store_copy: Path, tmp_path: Path, run_cli) -> None:
    Image.new("1", (9000, 9000)).save(tmp_path / "big.tif")
    line = one_error_line(run_cli("predict", tmp_path / "big.tif", "--store", store_copy, expect=7))
    assert f"input {str(tmp_path / 'big.tif')!r} is 81000000 pixels, {LIMIT}" in line


def test_arrays_given_in_memory_meet_the_same_limit() -> None:
    """The registered model's array input (`decode_array`): refused before the float copy."""
    from dmtcore.errors import DataError
    from dmtcore.inference.predict import decode_array
    from dmtcore.tasks.names import InputSpec

    huge = np.broadcast_to(np.zeros((), np.uint8), (1, 1, 7072, 7072))  # no memory behind it
    with pytest.raises(DataError, match=r"the input is 50013184 pixels, above the limit"):
        decode_array(huge, InputSpec(1, 8, 8), "the input")


def test_a_pickle_npy_is_refused_from_its_header(store_copy: Path, tmp_path: Path, run_cli) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    line = one_error_line(run_cli("predict", path, "--store", store_copy, expect=7))
    assert "is not a readable .npy array: it holds Python objects (dtype object)" in line


def test_a_npy_header_no_array_can_have_is_one_line(
    store_copy: Path, tmp_path: Path, run_cli
) -> None:
    path = npy_header_only(tmp_path / "absurd.npy", (1, 10**10, 10**10))
    line = one_error_line(run_cli("predict", path, "--store", store_copy, expect=7))
    assert "is not a readable .npy array: its header declares shape (1, 10000000000, " in line
