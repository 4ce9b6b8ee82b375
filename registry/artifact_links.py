"""Logged model weights that share the store's bytes on disk (issue 16: registry storage).

Every registry version is logged with a one-version store snapshot, twice (the array model
`model` and the images model `model-images`), so copies make the disk grow with versions ×
columns × 2. When a run's artifacts live in a local directory (the embedded store's
`<store>/mlartifacts`, or any local path or `file:` location), each logged
`artifacts/store/blobs/<sha256>.safetensors` is replaced, right after MLflow copied it, by a
hard link to the store's blob of that sha256: the disk then holds each column once, however
many versions and models name it, and grows by one column per add-task. The images model's
other files that equal the array model's (the model code, its environment, the manifest) become
links to those, too.

Why hard links, made after logging:
- MLflow's local artifact repository copies (`shutil.copy2`) and has no option to link;
  replacing its copies afterwards works whatever MLflow does inside `log_artifacts` and
  touches none of its internals. Remote artifact stores (a tracking server's proxy, S3, ...)
  keep their copies: nothing is done there.
- Not symbolic links, and not a version that refers to its parent's blobs: every logged model
  stays a complete directory of ordinary files, loadable on its own (`mlflow.pyfunc.load_model`
  with pickle disallowed, `dmt pull`, a copy of the run's artifacts elsewhere), and no deletion
  on either side can break the other. The store's clean-up of unreferenced blobs
  (`Store.remove_unfinished_writes`, after a rollback or an interrupted write), deleting a
  blob by hand, or deleting a run's artifacts only removes one name: the content stays while
  another name is left. A symbolic link or a parent reference would dangle after any of those.
- Safe because nothing writes into an existing blob file: the store writes a blob once, to a
  temporary file renamed into place (`Store._write_atomically`), and never rewrites one that
  exists; MLflow writes an artifact file only when it is logged, and `detach` unlinks linked
  files before anything is logged over them, so a copy never writes through a link.
- The content is checked on the link itself: it is made under a temporary name, its sha256
  compared with the blob's name, and only then renamed over MLflow's copy. A store blob that is
  missing, damaged or not a regular file, a store whose layout holds symbolic links, another
  filesystem, or any other OSError leaves MLflow's copy in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from dmtcore.errors import StoreError
from dmtcore.store.directory import BLOB_FILE, Store, check_layout

# Off: every logged model keeps MLflow's copies (the benchmark measures both side by side).
LINKING = True
# Where a logged dmt model keeps the weights of its one-version store.
LOGGED_BLOBS = "artifacts/store/blobs"


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The directory of `artifact_uri` when MLflow writes it as local files, else None."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    try:
        repository = get_artifact_repository(artifact_uri)
    except Exception:
        return None
    if not isinstance(repository, LocalArtifactRepository):
        return None
    return Path(repository.artifact_dir)


def detach(directory: Path) -> None:
    """Unlink every file under `directory` that has other hard links, so that logging over it
    writes new files instead of writing through a link into a store blob."""
    if not directory.is_dir() or directory.is_symlink():
        return
    for root, _, names in os.walk(directory):
        for name in names:
            path = Path(root, name)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_nlink > 1:
                    os.unlink(path)


def share(models: list[Path], store: Store) -> int:
    """Make the weight files of the models logged at `models` hard links to `store`'s blobs,
    and every other file of a later model identical to the first model's at the same place
    (code, environment, manifest) a link to it; the bytes now shared."""
    if not LINKING:
        return 0
    shared = sum(link_blobs(model, store) for model in models)
    return shared + sum(link_identical(model, models[0]) for model in models[1:])


def link_blobs(model_dir: Path, store: Store) -> int:
    """Replace the weight files logged under `model_dir` by hard links to `store`'s blobs of
    the same content; the bytes now shared (0 when linking is off or not possible)."""
    if not LINKING:
        return 0
    try:
        check_layout(store.path)
    except StoreError:
        return 0
    shared = 0
    for logged in sorted((model_dir / LOGGED_BLOBS).glob("*.safetensors")):
        if BLOB_FILE.match(logged.name):
            sha256 = logged.name.removesuffix(".safetensors")
            shared += _link(logged, store.blob_path(sha256), sha256)
    return shared


def link_identical(model_dir: Path, first: Path) -> int:
    """Replace each file of `model_dir` whose bytes equal the file at the same place in
    `first` by a hard link to that file; the bytes now shared."""
    if not LINKING:
        return 0
    shared = 0
    for root, _, names in os.walk(model_dir):
        for name in names:
            logged = Path(root, name)
            twin = first / logged.relative_to(model_dir)
            with contextlib.suppress(OSError):
                if _same_size_files(logged, twin):
                    shared += _link(logged, twin, _sha256(logged))
    return shared


def _link(logged: Path, source: Path, sha256: str) -> int:
    """Make `logged` a hard link to `source` if the source holds bytes of that sha256."""
    temporary = logged.with_name(f".{logged.name}.{os.getpid()}.link")
    try:
        if os.path.samefile(logged, source):
            return 0
        temporary.unlink(missing_ok=True)
        os.link(source, temporary, follow_symlinks=False)
        info = os.lstat(temporary)
        if not stat.S_ISREG(info.st_mode) or _sha256(temporary) != sha256:
            temporary.unlink()
            return 0
        os.replace(temporary, logged)
        return info.st_size
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return 0


def _same_size_files(one: Path, other: Path) -> bool:
    """Whether both are regular files (not links) of the same size: worth comparing."""
    first, second = os.lstat(one), os.lstat(other)
    regular = stat.S_ISREG(first.st_mode) and stat.S_ISREG(second.st_mode)
    return regular and first.st_size == second.st_size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
