"""Published pretrained weights: found in the library's own cache, fetched only on request.

torchvision keeps its checkpoints in `torch.hub.get_dir()/checkpoints/` (`$TORCH_HOME/hub`,
by default `~/.cache/torch/hub`) under the file name of the published URL; timm keeps its in
the Hugging Face cache (`$HF_HOME/hub/models--timm--NAME/snapshots/REV/model.safetensors`).
dmt reads them from there, so a user who already fetched them (with dmt or with the library)
fetches nothing again. Without the file, one error names it and the command that fetches it:
nothing is downloaded unless `--download` is given, and then by the library's own downloader
(hash-checked where the library publishes a hash).

torchvision publishes pickled `.pth` files: they are read with `torch.load(weights_only=True)`,
torch's restricted loader that rebuilds tensors and plain containers and refuses any other
object, and only once, at `dmt init`. The store then holds the weights as a safetensors blob
(see `dmtcore.operations.init`), so no later command reads the cache or unpickles anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmtcore.errors import DataError, InvalidValueError, first_line

if TYPE_CHECKING:  # torch loads only when weights are used: listing plugins must stay fast
    import torch

# The value of a backbone's `weights` option that means random initialisation.
NO_WEIGHTS = "none"
# The value that means "the library's recommended ImageNet weights" (torchvision's DEFAULT).
IMAGENET = "imagenet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(DataError):
    """Pretrained weights asked for but not in the library's cache (and no --download)."""


@dataclass(frozen=True)
class PublishedWeights:
    """One published set of weights for one backbone, and where its library caches it."""

    backbone: str
    name: str  # as the library names it, e.g. "ResNet50_Weights.IMAGENET1K_V2"
    path: Path  # where the library's cache keeps the file
    fetch: Callable[[], Path]  # the library's own downloader; returns the cached file
    read: Callable[[Path], dict[str, torch.Tensor]]  # the file as a state dict
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    url: str = ""

    def state_dict(self, download: bool = False) -> dict[str, torch.Tensor]:
        """The weights, from the cache; fetched first when `download` is set and they are not
        there. Anything but a mapping of names to tensors is refused."""
        path = self.path
        if not path.is_file():
            if not download:
                raise MissingWeightsError(
                    f"{self.backbone} weights {self.name} are not in the local cache: no file "
                    f"{str(path)!r}. Fetch them once with the same command and --download "
                    f"(e.g. 'dmt init --backbone {self.backbone} --backbone-option weights="
                    f"{IMAGENET} --download'), or copy the file there"
                    + (f" (from {self.url})" if self.url else "")
                )
            try:
                path = self.fetch()
            except Exception as exc:  # the network, a hash mismatch, a full disk
                raise DataError(
                    f"could not download {self.backbone} weights {self.name}"
                    + (f" from {self.url}" if self.url else "")
                    + f": {type(exc).__name__}: {first_line(exc)}"
                ) from exc
        try:
            state = self.read(path)
        except Exception as exc:
            raise InvalidValueError(
                f"{str(path)!r} is not a readable {self.backbone} checkpoint "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from exc
        import torch

        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise InvalidValueError(
                f"{str(path)!r} does not hold a state dict (names mapped to tensors)"
            )
        return state

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path.name, "url": self.url}


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision `.pth` checkpoint through torch's restricted (weights-only) loader."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def torchvision_weights(backbone: str, model: str, choice: str) -> PublishedWeights:
    """torchvision's published weights for `model` ('resnet50'); `choice` is 'imagenet' (the
    library's DEFAULT) or one of its names for them ('IMAGENET1K_V1')."""
    import torch
    from torchvision.models import get_model_weights

    enum = get_model_weights(model)
    names = [w.name for w in enum]
    if choice == IMAGENET:
        weights = enum.DEFAULT
    elif choice in names:
        weights = enum[choice]
    else:
        raise InvalidValueError(
            f"{backbone} has no weights {choice!r}; valid: {NO_WEIGHTS}, {IMAGENET} (= "
            f"{enum.DEFAULT.name}), {', '.join(names)}"
        )
    url = weights.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]

    def fetch() -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        from torch.hub import HASH_REGEX, download_url_to_file

        match = HASH_REGEX.search(path.name)
        download_url_to_file(url, str(path), match.group(1) if match else None, progress=True)
        return path

    transforms = weights.transforms()
    return PublishedWeights(
        backbone=backbone,
        name=f"{type(weights).__name__}.{weights.name}",
        path=path,
        fetch=fetch,
        read=read_torch_checkpoint,
        mean=tuple(getattr(transforms, "mean", IMAGENET_MEAN)),
        std=tuple(getattr(transforms, "std", IMAGENET_STD)),
        url=url,
    )


def load_into(
    net: torch.nn.Module, state: dict[str, torch.Tensor], backbone: str, skip: tuple[str, ...] = ()
) -> None:
    """Load a published state dict into a freshly built network. Keys under `skip` (the
    ImageNet classifier, which no column keeps) may be absent or extra; any other difference
    means the file is for another network, and is refused by name."""
    wanted = {k: v for k, v in state.items() if not k.startswith(skip)}
    missing, unexpected = net.load_state_dict(wanted, strict=False)
    missing = [k for k in missing if not k.startswith(skip)]
    if missing or unexpected:
        raise InvalidValueError(
            f"the weights are not a {backbone} state dict: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def adapt_to_column(
    fresh: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], backbone: str
) -> dict[str, torch.Tensor]:
    """The store's initial column (recorded for 3-channel input) for a column built for the
    store's input: a first convolution over other channel counts starts from the RGB filters'
    average, repeated (the usual way to reuse RGB weights on grey or multispectral images)."""
    if fresh.keys() != initial.keys():
        extra = sorted(set(initial) - set(fresh))[:3]
        absent = sorted(set(fresh) - set(initial))[:3]
        raise InvalidValueError(
            f"the store's initial {backbone} column does not fit a new column: missing "
            f"{absent}, unexpected {extra}"
        )
    out = {}
    for key, value in initial.items():
        target = fresh[key]
        if value.shape != target.shape:
            same_but_channels = (
                value.dim() == 4
                and target.dim() == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
            )
            if not same_but_channels:
                raise InvalidValueError(
                    f"the store's initial {backbone} column has {key} of shape "
                    f"{list(value.shape)}; a new column needs {list(target.shape)}"
                )
            value = value.mean(1, keepdim=True).repeat(1, target.shape[1], 1, 1)
        out[key] = value
    return out


def torchvision_option(
    backbone: str, model: str | None = None
) -> Callable[[dict[str, Any]], PublishedWeights | None]:
    """A `BackboneKind.weights` for a torchvision model: its `weights` option, 'none' (random
    initialisation), 'imagenet' or one of torchvision's weight names."""

    def weights(options: dict[str, Any]) -> PublishedWeights | None:
        choice = options.get("weights") or NO_WEIGHTS
        if choice == NO_WEIGHTS:
            return None
        return torchvision_weights(backbone, model or backbone, choice)

    return weights
