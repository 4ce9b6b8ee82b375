"""`imagefolder`: any directory of images in ImageFolder layout becomes a task with the name
the user gives it: `dmt add-task my-task --from-folder DIR`.

Layout (class names are the sub-folder names, in sorted order; images are read by PIL):

    DIR/<class>/*.png|jpg|...                     one folder per class, split here: a fixed,
                                                  seeded 20% of every class is held out as val
    DIR/train/<class>/...  DIR/val/<class>/...    the user's own split (DIR/test/<class>/...
                                                  too, optional); without DIR/val, 20% of
                                                  DIR/train is held out as above

Two classes make a binary task, more a multiclass one. The task is not registered by name at
start-up (no folder is known then): the CLI turns `--from-folder` into a recipe,
`{"kind": "imagefolder", "folder": "/abs/DIR"}`, and this plugin's `dmt_task_from_recipe`
builds the spec and completes the recipe (classes, split, seed) so that the manifest records
exactly how the task's data was made; eval and remove-task rebuild the task from it. The
held-out split uses its own seed, never the training seed, so it does not move between runs.
Images are read on every access (nothing preloaded) by `dmt predict`'s own reader
(`dmtcore.inference.predict.read_image`), so a file trains as `dmt predict` reads it: colour to
grey by luminance or grey to colour by repeating, resized bilinearly (antialiased) to the
store's size (default 3×32×32). When the task's data is loaded, one line on stderr says what
its images get, judged from their headers (at most `HEADERS_READ` of them), e.g.
"task 'pets': 60 images converted to the store's 1×8×8: colour → grey; 20×24 → 8×8 (bilinear,
antialiased); values 0–255 → 0–1".
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmtcore import DataRequest, InputSpec, TaskData, TaskSpec, hookimpl
from dmtcore.errors import DataError

RECIPE_KIND = "imagefolder"
NATIVE_SHAPE = (3, 32, 32)
VAL_FRACTION = 0.2
SPLIT_SEED = 20170821
# Image headers read for the conversion line, spread evenly over a larger folder (a header is
# a small read: well under a second for all of them).
HEADERS_READ = 1000
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT = (
    "give a directory with one sub-folder of images per class (DIR/<class>/*.png or .jpg), "
    "or DIR/train/<class>/ and DIR/val/<class>/"
)


@dataclass(frozen=True)
class Layout:
    """What a folder holds: the classes and, per split, (image path, class index) pairs."""

    classes: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]
    split: str  # 'folders' (the user's train/val) or 'seeded' (held out here)


def _images(folder: Path) -> list[str]:
    """Every image file under `folder`, recursively, in a fixed order."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(parent, f)
            for f in sorted(files)
            if f.lower().endswith(EXTENSIONS) and not f.startswith(".")
        )
    return found


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _samples(root: Path, classes: tuple[str, ...], what: str) -> list[tuple[str, int]]:
    """The images of every class folder under `root`; every class folder must hold some,
    and must be one of `classes`."""
    samples = []
    for name in _class_folders(root):
        if name not in classes:
            raise DataError(
                f"{what} {str(root)!r} has a class folder {name!r} that the training images do "
                f"not have; valid classes: {', '.join(classes)}"
            )
        images = _images(root / name)
        if not images:
            raise DataError(
                f"class folder {str(root / name)!r} has no images; expected files ending in "
                f"{', '.join(EXTENSIONS)}"
            )
        samples.extend((path, classes.index(name)) for path in images)
    if not samples:
        raise DataError(f"{what} {str(root)!r} has no class folders with images; {LAYOUT}")
    return samples


def held_out(samples: list[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): `fraction` of every class held out (at least one image of a class that
    has two or more), chosen by `seed`, the same on every run."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in samples])
    val_mask = np.zeros(len(samples), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = round(len(members) * fraction) or (1 if len(members) > 1 else 0)
        val_mask[rng.permutation(members)[: min(count, len(members) - 1)]] = True
    train = [s for s, held in zip(samples, val_mask, strict=True) if not held]
    val = [s for s, held in zip(samples, val_mask, strict=True) if held]
    return train, val


def scan(recipe: dict[str, Any]) -> Layout:
    """Read the folder a recipe names, checking it against the classes the recipe records."""
    given = recipe.get("folder")
    if not isinstance(given, str) or not given:
        raise DataError(f"an imagefolder recipe needs a 'folder' path, got {given!r}")
    folder = Path(given)
    if not folder.is_dir():
        state = "is not a directory" if folder.exists() else "does not exist"
        raise DataError(f"image folder {given!r} {state}; {LAYOUT}")
    own_split = (folder / "train").is_dir()
    train_root = folder / "train" if own_split else folder
    classes = tuple(_class_folders(train_root))
    if len(classes) < 2:
        raise DataError(
            f"image folder {str(train_root)!r} has {len(classes)} class folder(s) "
            f"{list(classes)}; a task needs at least 2; {LAYOUT}"
        )
    recorded = recipe.get("classes")
    if recorded is not None and list(recorded) != list(classes):
        raise DataError(
            f"image folder {str(train_root)!r} now has the classes {list(classes)}, but the task "
            f"was made with {list(recorded)}; restore the folder or add it under another name"
        )
    splits = {"train": _samples(train_root, classes, "training folder")}
    if own_split and (folder / "val").is_dir():
        splits["val"] = _samples(folder / "val", classes, "validation folder")
        split = "folders"
    else:
        fraction = float(recipe.get("val_fraction", VAL_FRACTION))
        seed = int(recipe.get("split_seed", SPLIT_SEED))
        splits["train"], splits["val"] = held_out(splits["train"], fraction, seed)
        split = "seeded"
        if not splits["val"] or len(splits["train"]) < 2:
            raise DataError(
                f"image folder {str(train_root)!r} has too few images to hold out a validation "
                f"split ({sum(map(len, splits.values()))} in all); give at least 2 images per "
                "class, or a DIR/val/<class>/ folder"
            )
    if own_split and (folder / "test").is_dir():
        splits["test"] = _samples(folder / "test", classes, "test folder")
    return Layout(classes, splits, split)


class FolderImages:
    """Image files read on every access (a map-style dataset, nothing preloaded) as `dmt
    predict` reads them, adapted to the store's input; labels in `targets` (which `--balance`
    reads without decoding)."""

    def __init__(self, samples: list[tuple[str, int]], input_spec: InputSpec, task: str = ""):
        self.paths = [path for path, _ in samples]
        self.targets = [label for _, label in samples]
        self.input_spec = input_spec
        self.task = task  # names the task in a message about an unreadable file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from dmtcore import read_image

        path = self.paths[index]
        what = f"task {self.task!r}: image {path!r}" if self.task else f"image {path!r}"
        return read_image(Path(path), self.input_spec, what)[0], self.targets[index]


def conversion_line(name: str, layout: Layout, input_spec: InputSpec) -> str | None:
    """What the task's images get to fit the store's input, in one line (None: nothing), judged
    from the headers of at most `HEADERS_READ` of them, spread evenly over every split."""
    from dmtcore import ImageConversions as Conversions
    from dmtcore import image_header

    paths = [path for samples in layout.splits.values() for path, _ in samples]
    step = max(1, -(-len(paths) // HEADERS_READ))
    read = paths[::step]
    conversions = Conversions()
    for path in read:
        header = image_header(Path(path))
        if header is not None:
            conversions.add(1, *header, input_spec)
    sampled = f" (from {len(read)} of its {len(paths)} images)" if len(read) < len(paths) else ""
    return conversions.line(f"task {name!r}", sampled)


def _say(line: str) -> None:
    """A note on stderr, from the main process only (as the CLI's notes are)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def _factory(name: str, layout: Layout):
    said: list[str] = []  # the conversion line is said once per task built (once a command)

    def datasets(request: DataRequest) -> TaskData:
        spec = request.input_spec or InputSpec(*NATIVE_SHAPE)
        if not said:
            said.append(name)
            line = conversion_line(name, layout, spec)
            if line is not None:
                _say(line)
        return TaskData(
            **{
                split: FolderImages(samples, spec, name) for split, samples in layout.splits.items()
            },
            deterministic=True,
        )

    return datasets


def build(name: str, recipe: dict[str, Any]) -> TaskSpec:
    """The task of an image folder, with the complete recipe it was built from."""
    folder = os.path.abspath(os.path.expanduser(str(recipe.get("folder", ""))))
    layout = scan({**recipe, "folder": folder})
    complete = {
        "kind": RECIPE_KIND,
        "folder": folder,
        "classes": list(layout.classes),
        "split": layout.split,
    }
    if layout.split == "seeded":
        complete["val_fraction"] = float(recipe.get("val_fraction", VAL_FRACTION))
        complete["split_seed"] = int(recipe.get("split_seed", SPLIT_SEED))
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in layout.splits.items())
    shown = ", ".join(layout.classes[:4]) + (", ..." if len(layout.classes) > 4 else "")
    return TaskSpec(
        name=name,
        description=f"images in {folder} ({len(layout.classes)} classes: {shown}; {counts})",
        input_shape=NATIVE_SHAPE,
        output="binary" if len(layout.classes) == 2 else "multiclass",
        num_outputs=len(layout.classes),
        class_names=layout.classes,
        datasets=_factory(name, layout),
        recipe=complete,
    )


@hookimpl
def dmt_task_from_recipe(name: str, recipe: dict[str, Any]) -> TaskSpec | None:
    if recipe.get("kind") != RECIPE_KIND:
        return None
    return build(name, recipe)
