"""What is done to an input to fit the store, seen from the command line: one rule for every
format and size (resized, never refused for its size), said once per command in one line on
stderr; `--from-folder` images read as `dmt predict` reads them and said the same way; and
`predict --json` with each probability vector on one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

RESIZED = "(bilinear, antialiased)"


def digits_16(n: int = 5) -> np.ndarray:
    """The first `n` digits as N×16×16 uint8 (0–255), each pixel repeated 2×2."""
    from sklearn.datasets import load_digits

    images = (load_digits().images[:n] * 255 / 16).round().astype(np.uint8)
    return images.repeat(2, axis=1).repeat(2, axis=2)


def predicted(run_cli, store: Path, *inputs: Path) -> tuple[np.ndarray, str]:
    """Probabilities of digits.class per image, and what stderr said."""
    result = run_cli("predict", *inputs, "--store", store, "--json")
    probabilities = json.loads(result.stdout)["tasks"]["digits.class"]["probabilities"]
    return np.array(probabilities), result.stderr


def test_every_format_and_size_is_resized_alike_and_said_in_one_line(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    """The same 16×16 digit as a grey PNG, a colour PNG, and .npy arrays of every layout
    (1×1×16×16, 5×16×16, 16×16, 16×16×1) gives the same prediction in a 1×8×8 store."""
    images = digits_16()
    grey, colour = tmp_path / "grey.png", tmp_path / "colour.png"
    Image.fromarray(images[0]).save(grey)
    Image.fromarray(np.repeat(images[0][..., None], 3, axis=2)).save(colour)
    arrays = {
        "nchw": images[:1, None],
        "nhw": images,  # five digits: N gray images, at any size
        "hw": images[0],
        "hwc": images[0][..., None],
    }
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    expected, said = predicted(run_cli, store_copy, grey)
    assert said == (
        f"input: 1 image converted to the store's 1×8×8: 16×16 → 8×8 {RESIZED}; "
        "values 0–255 → 0–1\n"
    )
    paths = [colour, *(tmp_path / f"{name}.npy" for name in arrays)]
    every, said = predicted(run_cli, store_copy, *paths)
    assert len(every) == 9
    for row in (0, 1, 2, 7, 8):  # colour.png, nchw.npy, nhw.npy[0], hw.npy, hwc.npy
        np.testing.assert_allclose(every[row], expected[0], atol=1e-5)
    assert said == (
        f"input: 9 images converted to the store's 1×8×8: colour → grey for 1; 16×16 → 8×8 "
        f"{RESIZED}; values 0–255 → 0–1\n"
    )
    # the other four digits of the 5×16×16 array predict as each would alone
    np.save(tmp_path / "one.npy", images[3])
    alone, _ = predicted(run_cli, store_copy, tmp_path / "one.npy")
    np.testing.assert_allclose(every[5], alone[0], atol=1e-5)


def test_sizes_colours_and_value_ranges_are_counted_apart(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    """A 64×64 colour JPEG (decoded at a reduced scale, still named by its own size), a
    float 16×16 array and an 8×8 float array that needs nothing."""
    photo = np.repeat(np.repeat(digits_16(1)[0], 4, axis=0), 4, axis=1)
    Image.fromarray(np.repeat(photo[..., None], 3, axis=2)).save(tmp_path / "photo.jpg")
    np.save(tmp_path / "float16.npy", digits_16(2)[:, None].astype(np.float32) / 255)
    np.save(tmp_path / "fits.npy", np.zeros((3, 1, 8, 8), np.float32))
    inputs = (tmp_path / "photo.jpg", tmp_path / "float16.npy", tmp_path / "fits.npy")
    result = run_cli("predict", *inputs, "--store", store_copy)
    assert result.stderr == (
        "input: 3 of 6 images converted to the store's 1×8×8: colour → grey for 1; "
        f"16×16 → 8×8 for 2, 64×64 → 8×8 for 1 {RESIZED}; values 0–255 → 0–1 for 1\n"
    )
    assert "input:" not in result.stdout
    quiet = run_cli("predict", tmp_path / "fits.npy", "--store", store_copy)
    assert quiet.stderr == ""  # nothing converted, nothing said


def test_shapes_are_refused_for_their_layout_never_for_their_size(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    np.save(tmp_path / "three.npy", np.zeros((3, 16, 16), np.float32))
    result = run_cli("predict", tmp_path / "three.npy", "--store", store_copy, expect=7)
    assert result.stderr == (
        f"Error: input {str(tmp_path / 'three.npy')!r} has shape (3, 16, 16): 3 gray 16×16 "
        "images or one 3-channel image? Save it as N×C×H×W: (3, 1, 16, 16) for 3 images, "
        "(1, 3, 16, 16) for one colour image\n"
    )
    np.save(tmp_path / "five.npy", np.zeros((2, 5, 16, 16), np.float32))
    result = run_cli("predict", tmp_path / "five.npy", "--store", store_copy, expect=7)
    assert "has shape (2, 5, 16, 16); images have 5 channels" in result.stderr
    assert result.stderr.rstrip().endswith("of any H×W (resized to 8×8)")


def test_predict_json_puts_each_vector_on_one_line(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    import dmtcore

    path = tmp_path / "x.npy"
    np.save(path, digits_16(3)[:, None])
    result = run_cli("predict", path, "--store", store_copy, "--json")
    payload = dmtcore.open_store(store_copy).predict([path])
    assert json.loads(result.stdout) == json.loads(json.dumps(payload, default=str))
    lines = result.stdout.splitlines()
    vectors = [json.loads(line.strip().rstrip(",")) for line in lines if "[" in line[:10]]
    # one line per image and task: ten numbers for digits.class, two for digits.even
    assert sorted(len(vector) for vector in vectors) == [2] * 3 + [10] * 3
    assert lines[0] == "{" and '  "store": ' in lines[1]  # still indented JSON
    assert result.stderr.startswith("input: 3 images converted")


def test_json_text_joins_only_lists_of_numbers() -> None:
    from dmtcore.inference.predict import json_text

    payload = {
        "map": [[1, 2.5e-07], [-3, None]],
        "names": ["[\n1", "b"],
        "mixed": [1, "x"],
        "empty": [],
        "flags": [True, False],
    }
    text = json_text(payload)
    assert json.loads(text) == payload
    assert "    [1, 2.5e-07],\n    [-3, null]\n" in text  # rows on one line, one row a line
    assert '"flags": [true, false]' in text
    assert '"names": [\n    "[\\n1",\n    "b"\n  ]' in text  # strings stay one a line
    assert '"mixed": [\n' in text


def write_colour_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of 20×24 colour PNGs: red and blue noise."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(("blue", "red")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (20, 24, 3), dtype=np.uint8)
            image[..., 2 - 2 * index] += 170
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def test_from_folder_says_what_its_images_get(store_copy: Path, run_cli, tmp_path: Path) -> None:
    """Colour photos in a 1×8×8 store are said to become grey and smaller, once, when the task
    is made and when it is loaded again (eval)."""
    folder = write_colour_folder(tmp_path / "pets")
    line = (
        f"task 'pets': 12 images converted to the store's 1×8×8: colour → grey; 20×24 → 8×8 "
        f"{RESIZED}; values 0–255 → 0–1"
    )
    added = run_cli("add-task", "pets", "--from-folder", folder, "--store", store_copy,
                    "--epochs", "1", "--batch-size", "4", "--no-tracking", "--json")  # fmt: skip
    assert added.stderr.splitlines().count(line) == 1, added.stderr
    json.loads(added.stdout)  # stdout is still the one JSON document
    evaluated = run_cli("eval", "pets", "--store", store_copy)
    assert evaluated.stderr.splitlines().count(line) == 1, evaluated.stderr


def test_folder_images_train_as_predict_reads_them(tmp_path: Path, monkeypatch) -> None:
    """A folder image is the very tensor `dmt predict` makes of the same file; a large folder's
    line says how many headers it was judged from."""
    import torch

    import dmt_plugins.imagefolder as imagefolder
    from dmtcore.inference.predict import iter_batches
    from dmtcore.tasks.names import InputSpec

    folder = write_colour_folder(tmp_path / "pets")
    layout = imagefolder.scan({"folder": str(folder)})
    spec = InputSpec(1, 8, 8)
    images = imagefolder.FolderImages(layout.splits["train"], spec)
    path = Path(images.paths[0])
    (read,), _ = next(iter_batches([path], spec))
    assert torch.equal(images[0][0], read)
    monkeypatch.setattr(imagefolder, "HEADERS_READ", 5)
    line = imagefolder.conversion_line("pets", layout, spec)
    assert line is not None
    assert line.startswith("task 'pets': 4 images converted")  # every third of 12
    assert line.endswith("(from 4 of its 12 images)")
