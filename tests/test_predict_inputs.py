"""`dmt predict` inputs: every format decoded to the model's scale, every bad file refused in one
line naming it, no third-party warning, and Ctrl-C honoured between batches."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fingerprint


def digits(n: int = 4) -> np.ndarray:
    """The first `n` digits as N×8×8 uint8 (0–255), so 8-bit and 16-bit files hold the same."""
    from sklearn.datasets import load_digits

    return (load_digits().images[:n] * 255 / 16).round().astype(np.uint8)


def probabilities(run_cli, store: Path, *inputs: Path) -> np.ndarray:
    result = run_cli("predict", *inputs, "--store", store, "--json")
    return np.array(json.loads(result.stdout)["tasks"]["digits.class"]["probabilities"])


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`×`height` pixels (Pillow cannot make an empty one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_16_bit_and_float_images_predict_like_the_same_8_bit_png(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    image = digits(1)[0]
    Image.fromarray(image).save(tmp_path / "8.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 255 -> 65535
    Image.fromarray(image.astype(np.float32) / 255).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    inputs = (tmp_path / "8.png", tmp_path / "16.png", tmp_path / "float.tif")
    eight, sixteen, floats = probabilities(run_cli, store_copy, *inputs)
    np.testing.assert_allclose(sixteen, eight, atol=1e-6)
    np.testing.assert_allclose(floats, eight, atol=1e-6)


def test_uint8_npy_is_scaled_like_a_png(store_copy: Path, run_cli, tmp_path: Path) -> None:
    images = digits()[:, None]
    np.save(tmp_path / "uint8.npy", images)
    np.save(tmp_path / "float.npy", images.astype(np.float32) / 255)
    np.save(tmp_path / "uint16.npy", images.astype(np.uint16) * 257)
    expected = probabilities(run_cli, store_copy, tmp_path / "float.npy")
    for name in ("uint8.npy", "uint16.npy"):
        np.testing.assert_allclose(
            probabilities(run_cli, store_copy, tmp_path / name), expected, atol=1e-6
        )


def write_bad_file(path: Path) -> None:
    """The bad input its name says: an empty file, an .npz or text named .npy, empty images."""
    if path.name == "empty.npy":
        path.write_bytes(b"")
    elif path.name == "archive.npy":
        np.savez(path.with_suffix(".npz"), x=np.zeros((8, 8), np.float32))
        path.with_suffix(".npz").rename(path)
    elif path.name == "text.npy":
        path.write_text("0.5 0.5\n0.5 0.5\n")
    elif path.name == "flat.npy":
        np.save(path, np.zeros((2, 1, 0, 8), np.float32))
    else:
        path.write_bytes(png_header(8, 0))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.npy", "is empty; expected a .npy file"),
        ("archive.npy", "is an .npz archive (numpy.savez), not a .npy array"),
        ("text.npy", "is not a .npy file (no NUMPY header)"),
        ("flat.npy", "has shape (2, 1, 0, 8); images need at least 1 channel and 1×1 pixels"),
        ("flat.png", "is a PNG of 8×0 pixels; an image needs at least 1×1"),
    ],
)
def test_bad_files_are_refused_naming_them(
    store_copy: Path, run_cli, tmp_path: Path, name: str, message: str
) -> None:
    path = tmp_path / name
    write_bad_file(path)
    before = fingerprint(store_copy)
    result = run_cli("predict", path, "--store", store_copy, expect=7)
    assert result.stderr.startswith(f"Error: input {str(path)!r} {message}")
    assert result.stderr.count("\n") == 1
    assert fingerprint(store_copy) == before


def test_float_inputs_print_no_warning(store_copy: Path, tmp_path: Path) -> None:
    """In a fresh process: torch warns about a read-only array (memory-mapped, or Pillow's) once
    per process."""
    images = digits()[:, None].astype(np.float32) / 255
    np.save(tmp_path / "x.npy", images)
    Image.fromarray(images[0, 0]).save(tmp_path / "x.tif")
    args = [sys.executable, "-m", "dmtcore", "predict", str(tmp_path / "x.tif"),
            str(tmp_path / "x.npy"), "--store", str(store_copy)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_decompression_bomb_is_refused_without_a_warning(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    Image.new("1", (8000, 8000)).save(tmp_path / "bomb.png")  # 64 Mpx, between 1× and 2× the limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("predict", tmp_path / "bomb.png", "--store", store_copy, expect=7)
    assert [str(w.message) for w in caught] == []
    assert "is 64000000 pixels, above the limit of 50000000" in result.stderr


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_a_long_predict_at_the_next_batch(store_copy: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.npy"  # 200k images, ~40 s to predict on a CPU; sparse, made at once
    np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(200_000, 1, 8, 8)).flush()
    args = [sys.executable, "-m", "dmtcore", "predict", str(big), "--store", str(store_copy),
            "--batch-size", "64"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 120
    while str(big) not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # the array is memory-mapped once predict reads it
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 10
    assert err == "Interrupted: nothing was committed; the store is as it was.\n"
    assert out == ""


def test_every_unambiguous_layout_predicts_like_n_by_c_by_h_by_w(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    """N×H×W for this 1-channel 8×8 store, and channels-last arrays, are N images, not one
    image of N channels."""
    images = digits(5).astype(np.float32) / 255
    layouts = {
        "nchw": images[:, None],
        "nhw": images,
        "nhwc": images[..., None],
        "nhwc-rgb": np.repeat(images[..., None], 3, axis=3),  # luminance of gray is gray
        "hwc": images[0][..., None],
    }
    for name, array in layouts.items():
        np.save(tmp_path / f"{name}.npy", array)
    expected = probabilities(run_cli, store_copy, tmp_path / "nchw.npy")
    assert expected.shape == (5, 10)
    for name in ("nhw", "nhwc", "nhwc-rgb"):
        np.testing.assert_allclose(
            probabilities(run_cli, store_copy, tmp_path / f"{name}.npy"), expected, atol=1e-5
        )
    np.testing.assert_allclose(
        probabilities(run_cli, store_copy, tmp_path / "hwc.npy"), expected[:1], atol=1e-5
    )


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (3, 8, 8),
            "has shape (3, 8, 8): 3 gray 8×8 images or one 3-channel image? Save it as "
            "N×C×H×W: (3, 1, 8, 8) for 3 images, (1, 3, 8, 8) for one colour image",
        ),
        (
            (64,),  # any H×W is resized (5×16×16 is 5 gray images): only layouts are refused
            "has shape (64,); expected H×W, C×H×W, N×C×H×W, H×W×C or N×H×W×C with C 1 or 3, "
            "N×H×W (gray images), of any H×W (resized to 8×8)",
        ),
        (
            (2, 5, 8, 7),
            "has shape (2, 5, 8, 7); images have 5 channels; the store takes 1 (1 or 3 are "
            "accepted, channels first or last)",
        ),
        (
            (6, 64),
            "has shape (6, 64): rows of 64 numbers look like flattened images; reshape them "
            "to (6, 1, 8, 8) (N×C×H×W) before saving",
        ),
    ],
)
def test_shapes_that_fit_no_layout_or_two_are_refused(
    store_copy: Path, run_cli, tmp_path: Path, shape: tuple[int, ...], message: str
) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(shape, np.float32))
    before = fingerprint(store_copy)
    result = run_cli("predict", path, "--store", store_copy, expect=7)
    assert result.stderr.startswith(f"Error: input {str(path)!r} {message}")
    assert result.stderr.count("\n") == 1
    assert fingerprint(store_copy) == before


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            np.arange(17, dtype=np.float32),  # scikit-learn's digits: 0 to 16
            "has float32 values from 0 to 16; expected 0 to 1 (uint8 and uint16 arrays are "
            "scaled by their range, other dtypes are taken as they are): divide by the "
            "pixels' full range: by 16 if that is the largest possible value",
        ),
        (
            np.arange(256, dtype=np.float64),
            "has float64 values from 0 to 255; expected 0 to 1 (uint8 and uint16 arrays are "
            "scaled by their range, other dtypes are taken as they are): divide by the "
            "pixels' full range: by 255 for 8-bit pixels",
        ),
        (np.linspace(-2, 2, 9, dtype=np.float32), "undo any normalisation (x * std + mean)"),
        (
            np.arange(256, dtype=np.int64),
            "has int64 values from 0 to 255; expected 0 to 1 (uint8 and uint16 arrays are "
            "scaled by their range, other dtypes are taken as they are): save 0–255 pixels "
            "as uint8",
        ),
    ],
)
def test_values_outside_0_1_are_refused_with_the_division_to_make(
    store_copy: Path, run_cli, tmp_path: Path, values: np.ndarray, message: str
) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.resize(values, (4, 1, 8, 8)))
    before = fingerprint(store_copy)
    result = run_cli("predict", path, "--store", store_copy, expect=7)
    assert result.stderr.startswith(f"Error: input {str(path)!r} has ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert fingerprint(store_copy) == before
