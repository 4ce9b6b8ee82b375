"""`timm:<model>`: any timm model whose features run one module after another, as a column.

timm is an optional extra (`pip install 'dmt-vision[timm]'`), never a dependency: without it,
asking for `timm:…` says how to install it. The model is built by `timm.create_model` without
its classifier and cut into stages at the boundaries its `feature_info` reports (where the
resolution halves: ResNet's residual stages, ConvNeXt's stages, EfficientNet's block groups),
so connections sit between them. The cut runs the model's top-level modules (Sequentials
flattened, as timm's own feature extractors do) in order; every time a model is first used in
a process, its stage outputs are checked against the model's own `forward_features` on a small
random batch, and a model for which they differ (ViTs, whose position embedding is added
outside any module) is refused with that reason rather than trained wrongly.

Tested families (tests/test_backbone_zoo.py): resnet (`timm:resnet18`, `timm:resnet50`),
convnext (`timm:convnext_atto`), efficientnet (`timm:efficientnet_b0`).

`weights=imagenet` reads the model's default pretrained weights from the Hugging Face cache
(`$HF_HOME/hub/models--timm--MODEL.TAG/…/model.safetensors`: safetensors, nothing to
unpickle); `--download` fetches them with `huggingface_hub.hf_hub_download`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmtcore.errors import InvalidValueError, PluginError, first_line
from dmtcore.hooks.kinds import BackboneFamily, BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl
from dmtcore.model.backbones import check_flag
from dmtcore.model.backbones.pretrained import (
    IMAGENET,
    NO_WEIGHTS,
    PublishedWeights,
    load_into,
)

PREFIX = "timm"
WEIGHTS_FILE = "model.safetensors"
CHECK_SIDE = 64  # the random batch the cut is checked on


def import_timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise PluginError(
            "timm backbones need timm: pip install 'dmt-vision[timm]' (or pip install timm)"
        ) from exc
    return timm


def top_level_modules(model: Any, wanted: list[str]) -> list[tuple[str, Any]]:
    """The model's children in order, a Sequential expanded one level ('stages.0' for the
    first module of `stages`) where a feature boundary lies inside it, the order timm's
    FeatureListNet runs them in."""
    from torch import nn

    out = []
    for name, child in model.named_children():
        inside = any(w.startswith(f"{name}.") for w in wanted)
        if isinstance(child, nn.Sequential) and inside:
            out.extend((f"{name}.{sub}", module) for sub, module in child.named_children())
        else:
            out.append((name, child))
    return out


def cut(model_name: str, model: Any) -> tuple[list[list[Any]], list[str]]:
    """The model's modules up to its last feature boundary, grouped into one list per stage."""
    info = model.feature_info
    wanted = [entry["module"] for entry in info]
    modules = top_level_modules(model, wanted)
    names = [name for name, _ in modules]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise InvalidValueError(
            f"timm:{model_name} cannot be cut into stages: its feature boundaries {missing} "
            "are not top-level modules that run in order"
        )
    # Reductions repeat where a boundary keeps the resolution (timm lists the stem at /2 and
    # layer1 at /4 for ResNets); keep the last boundary of each resolution, from /4 on when
    # the model has one (a /2 stem alone is too small a stage to be worth a connection).
    by_reduction: dict[int, str] = {}
    for entry in info:
        by_reduction[entry["reduction"]] = entry["module"]
    cuts = [m for r, m in sorted(by_reduction.items()) if r >= 4 or len(by_reduction) < 4]
    stages: list[list[Any]] = [[]]
    for name, module in modules:
        stages[-1].append(module)
        if name == cuts[-1]:
            break
        if name in cuts:
            stages.append([])
    return stages, cuts


def verify_cut(model_name: str, model: Any, stages: list[Any]) -> None:
    """The cut's last output equals the model's own features at that boundary."""
    import torch

    info = model.feature_info
    last = info[-1]["module"]
    captured = []
    handle = dict(model.named_modules())[last].register_forward_hook(
        lambda m, i, o: captured.append(o)
    )
    was_training = model.training
    model.eval()
    try:
        x = torch.rand(2, 3, CHECK_SIDE, CHECK_SIDE, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.forward_features(x)
            h = x
            for stage in stages:
                h = stage(h)
    except Exception as exc:
        raise InvalidValueError(
            f"timm:{model_name} could not be checked on a {CHECK_SIDE}-pixel batch "
            f"({type(exc).__name__}: {first_line(exc)}); dmt "
            "takes convolutional timm models such as timm:resnet50, timm:convnext_tiny or "
            "timm:efficientnet_b0"
        ) from exc
    finally:
        handle.remove()
        model.train(was_training)
    if (
        not captured
        or captured[0].shape != h.shape
        or not torch.allclose(captured[0], h, atol=1e-5)
    ):
        raise InvalidValueError(
            f"timm:{model_name} does not run its modules one after another (its features "
            "differ from a cut at its feature boundaries, as for ViTs); choose a convolutional "
            "model such as timm:resnet50, timm:convnext_tiny or timm:efficientnet_b0"
        )


def make_kind(model_name: str) -> BackboneKind:
    timm = import_timm()
    if not timm.is_model(model_name.split(".")[0]):
        close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:5]
        raise InvalidValueError(
            f"timm has no model {model_name!r}"
            + (f"; close: {', '.join(close)}" if close else "")
            + " ('python -c \"import timm; print(timm.list_models())\"' lists them)"
        )
    name = f"{PREFIX}:{model_name}"
    verified = False  # the cut is checked once per process, on the first real build

    def build(
        input_spec: Any, options: dict[str, Any], weights: dict[str, Any] | None = None
    ) -> Any:
        from torch import nn

        from dmtcore.model.backbones import Column

        spatial = check_flag(name, options, "spatial")
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if weights is not None:
            classifier = model.pretrained_cfg.get("classifier") or "fc"
            load_into(model, weights, name, skip=(f"{classifier}.",))
        groups, stage_names = cut(model_name, model)
        stages = [nn.Sequential(*group) for group in groups]
        nonlocal verified
        if not verified and next(model.parameters()).device.type != "meta":
            verify_cut(model_name, model, stages)
            verified = True
        if input_spec.channels != 3:
            from dmtcore.model.backbones.sequential import replace_first_conv

            replace_first_conv(stages[0], input_spec.channels)
        if not spatial:
            stages[-1] = nn.Sequential(*stages[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Column(stages, input_spec.shape, stage_names)

    def weights(options: dict[str, Any]) -> PublishedWeights | None:
        choice = options.get("weights") or NO_WEIGHTS
        if choice == NO_WEIGHTS:
            return None
        if choice != IMAGENET:
            raise InvalidValueError(
                f"{name} weights must be {NO_WEIGHTS} or {IMAGENET} (the model's default "
                f"pretrained tag; name another tag in the model, e.g. timm:resnet50.a1_in1k), "
                f"got {choice!r}"
            )
        return hub_weights(name, model_name)

    return BackboneKind(
        name=name,
        description=f"timm {model_name}, cut at its feature boundaries",
        build=build,
        default_options={"weights": NO_WEIGHTS, "spatial": False},
        init_only_options=("weights",),
        weights=weights,
    )


def hub_weights(name: str, model_name: str) -> PublishedWeights:
    """The model's default pretrained weights in the Hugging Face cache."""
    timm = import_timm()
    import huggingface_hub
    from huggingface_hub import constants

    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise InvalidValueError(
            f"{name} publishes no weights on the Hugging Face hub, the only ones dmt reads"
        )
    cached = huggingface_hub.try_to_load_from_cache(repo, WEIGHTS_FILE)
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    path = (
        Path(cached)
        if isinstance(cached, str)
        else folder / "snapshots" / "REVISION" / WEIGHTS_FILE
    )

    def fetch() -> Path:
        return Path(huggingface_hub.hf_hub_download(repo, WEIGHTS_FILE))

    def read(file: Path) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(file))

    return PublishedWeights(
        backbone=name,
        name=f"{repo} ({WEIGHTS_FILE})",
        path=path,
        fetch=fetch,
        read=read,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        url=f"https://huggingface.co/{repo}",
    )


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone_family(
        BackboneFamily(
            prefix=PREFIX,
            description=(
                "any convolutional timm model, cut at its feature boundaries (needs the "
                "'timm' extra); weights=imagenet from the Hugging Face cache"
            ),
            make=make_kind,
            examples=("timm:resnet50", "timm:convnext_tiny", "timm:efficientnet_b0"),
        )
    )
