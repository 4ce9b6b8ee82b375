"""The backbone zoo: torchvision and timm columns cut into stages, grown task by task, and
started from pretrained weights read offline from fabricated files in each library's cache
layout (the real files cannot be downloaded here; their format and location are the same).

Every backbone is grown at a tiny input (32 px; AlexNet needs 64) with random weights: one
task, then a second one, after which the first task's outputs must be bit-identical, and a
re-opened store must evaluate to the metrics it recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dmtcore.api import list_backbones, open_store
from dmtcore.errors import DataError, DmtError, InvalidValueError
from dmtcore.hooks.host import create_plugin_host
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.names import InputSpec

PLUGIN = str(Path(__file__).with_name("tiny_tasks_plugin.py"))
TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vgg16",
    "vgg16_bn",
    "alexnet",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
]
TIMM = ["timm:resnet18", "timm:convnext_atto", "timm:efficientnet_b0"]
FAST = dict(epochs=1, batch_size=8)


def side(backbone: str) -> int:
    return 64 if backbone == "alexnet" else 32


@pytest.fixture(scope="module")
def kinds():
    return create_plugin_host(autoload=False).kinds


def outputs(path: Path, task: str, images: torch.Tensor) -> torch.Tensor:
    store = Store.open(path)
    model = load_model(store, store.manifest(), create_plugin_host([PLUGIN]).kinds)
    with torch.no_grad():
        return model(images, [task])[task]


@pytest.mark.parametrize(
    ("backbone", "count", "last"),
    [
        ("resnet18", 4, (512,)),
        ("resnet50", 4, (2048,)),
        ("vgg16", 7, (4096,)),
        ("alexnet", 5, (4096,)),
        ("mobilenet_v3_large", 5, (960,)),
        ("efficientnet_b0", 5, (1280,)),
        ("convnext_tiny", 4, (768,)),
        ("timm:resnet18", 4, (512,)),
    ],
)
def test_stages_are_cut_where_the_papers_cut_them(kinds, backbone, count, last) -> None:
    kind = kinds.backbone(backbone)
    column = kind.build(InputSpec(3, side(backbone), side(backbone)), kind.resolve_options({}))
    assert len(column.stages) == count
    assert column.out_shape == last
    assert len(column.stage_names) == count


@pytest.mark.parametrize(
    ("backbone", "options", "reductions"),
    [
        ("resnet18", {"dilated": True}, [4, 8, 8, 8]),
        ("resnet50", {"dilated": True}, [4, 8, 8, 8]),
        ("resnet50", {"dilated": True, "output_stride": 16}, [4, 8, 16, 16]),
        ("resnet34", {"dilated": True, "output_stride": 16}, [4, 8, 16, 16]),
        ("vgg16", {"spatial": True}, [2, 4, 8, 8, 8]),
    ],
)
def test_dilated_columns_keep_the_output_stride_asked_for(
    kinds, backbone, options, reductions
) -> None:
    kind = kinds.backbone(backbone)
    column = kind.build(InputSpec(3, 64, 64), kind.resolve_options(options))
    assert [s["reduction"] for s in column.describe_stages()] == reductions


def test_a_bad_output_stride_is_refused_by_value(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="output_stride must be one of 8, 16, got 4"):
        open_store(tmp_path / "s").init(
            "3x32x32", backbone="resnet50", backbone_options={"dilated": True, "output_stride": 4}
        )
    assert not (tmp_path / "s" / "CURRENT").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", TORCHVISION + TIMM)
def test_growing_a_store_keeps_old_outputs_and_reopens_as_recorded(
    tmp_path: Path, backbone: str
) -> None:
    path = tmp_path / "store"
    n = side(backbone)
    store = open_store(path, plugins=[PLUGIN], tracking=False)
    store.init(f"3x{n}x{n}", backbone=backbone)
    store.add_task("tiny.left", init_from="none", **FAST)
    images = torch.rand(4, 3, n, n, generator=torch.Generator().manual_seed(3))
    before = outputs(path, "tiny.left", images)
    store.add_task("tiny.top", **FAST)
    assert torch.equal(outputs(path, "tiny.left", images), before)
    recorded = {t["name"]: t["metrics"] for t in Store.open(path).manifest()["tasks"]}
    again = open_store(path, plugins=[PLUGIN], tracking=False).evaluate()["metrics"]
    for task, metrics in recorded.items():
        assert again[task]["balanced_accuracy"] == pytest.approx(
            metrics["balanced_accuracy"], abs=1e-6
        )


# -- pretrained weights, offline ------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def fabricate_torchvision(home: Path, model: str, filename: str) -> dict[str, torch.Tensor]:
    """A checkpoint where torchvision's downloader would leave it, in its format (a pickled
    state dict, as torch.save writes it), with weights and BatchNorm statistics unlike a
    fresh initialisation's (another seed; statistics away from 0 and 1)."""
    import torchvision

    torch.manual_seed(123)
    state = getattr(torchvision.models, model)().state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = torch.rand_like(value) * 0.1
        elif key.endswith("running_var"):
            state[key] = 1 + torch.rand_like(value) * 0.1
    target = home / "hub" / "checkpoints" / filename
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    return state


def test_imagenet_weights_come_from_torchvisions_cache_into_the_store(
    torch_home: Path, tmp_path: Path
) -> None:
    state = fabricate_torchvision(torch_home, "resnet18", "resnet18-f37072fd.pth")
    path = tmp_path / "store"
    store = open_store(path, plugins=[PLUGIN], tracking=False)
    record = store.init("3x32x32", backbone="resnet18", backbone_options={"weights": "imagenet"})
    recipe = record["manifest"]["backbone"]
    assert recipe["pretrained"]["name"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert recipe["pretrained"]["file"] == "resnet18-f37072fd.pth"
    assert recipe["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert recipe["stages"] == ["conv1-layer1", "layer2", "layer3", "layer4-avgpool"]
    (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").unlink()  # never read again

    # --freeze-stages 2: the first two stages keep the file's weights exactly
    store.add_task("tiny.left", init_from="none", freeze_stages=2, **FAST)
    manifest = Store.open(path).manifest()
    model = load_model(Store.open(path), manifest, create_plugin_host([PLUGIN]).kinds)
    column = model.part("tiny.left", "column")
    assert torch.equal(column.stages[0][0].weight, state["conv1.weight"])
    assert torch.equal(column.stages[1][0].conv1.weight, state["layer2.0.conv1.weight"])
    assert torch.equal(column.stages[0][1].running_mean, state["bn1.running_mean"])
    assert not torch.equal(column.stages[3][0][0].conv1.weight, state["layer4.0.conv1.weight"])
    # a later column starts from the same weights (no stored column asked for)
    store.add_task("tiny.top", init_from="none", freeze_stages=4 - 1, **FAST)
    model = load_model(
        Store.open(path), Store.open(path).manifest(), create_plugin_host([PLUGIN]).kinds
    )
    assert torch.equal(
        model.part("tiny.top", "column").stages[2][0].conv1.weight, state["layer3.0.conv1.weight"]
    )
    assert Store.open(path).manifest()["operation"]["settings"]["freeze_stages"] == 3
    assert open_store(path).verify()["ok"]


def test_normalisation_is_applied_to_every_input(torch_home: Path, tmp_path: Path) -> None:
    """Training, evaluation and prediction all see (x − mean) / std: the model applies it."""
    fabricate_torchvision(torch_home, "resnet18", "resnet18-f37072fd.pth")
    path = tmp_path / "store"
    store = open_store(path, plugins=[PLUGIN], tracking=False)
    store.init("3x32x32", backbone="resnet18", backbone_options={"weights": "imagenet"})
    store.add_task("tiny.left", **FAST)
    model = load_model(Store.open(path), Store.open(path).manifest(), create_plugin_host().kinds)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        applied = model(x, ["tiny.left"])["tiny.left"]
        model.normalize = None
        by_hand = model((x - mean) / std, ["tiny.left"])["tiny.left"]
        unnormalised = model(x, ["tiny.left"])["tiny.left"]
    assert torch.allclose(applied, by_hand, atol=1e-5)
    assert not torch.allclose(applied, unnormalised, atol=1e-3)


def test_grey_inputs_start_from_the_rgb_filters_average(torch_home: Path, tmp_path: Path) -> None:
    state = fabricate_torchvision(torch_home, "resnet18", "resnet18-f37072fd.pth")
    path = tmp_path / "store"
    store = open_store(path, plugins=[PLUGIN], tracking=False)
    store.init("1x32x32", backbone="resnet18", backbone_options={"weights": "imagenet"})
    store.add_task("tiny.left", init_from="none", freeze_stages=1, **FAST)
    model = load_model(Store.open(path), Store.open(path).manifest(), create_plugin_host().kinds)
    conv1 = model.part("tiny.left", "column").stages[0][0].weight
    assert conv1.shape[1] == 1
    assert torch.allclose(conv1, state["conv1.weight"].mean(1, keepdim=True))


def test_missing_weights_name_the_file_and_the_command_and_write_nothing(
    torch_home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    with pytest.raises(DataError) as caught:
        open_store(path).init(
            "3x32x32", backbone="resnet50", backbone_options={"weights": "imagenet"}
        )
    message = str(caught.value)
    assert str(torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "--download" in message
    assert not (path / "CURRENT").exists()


def test_unknown_weight_names_list_the_valid_ones(torch_home: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        open_store(tmp_path / "s").init(
            "3x32x32", backbone="resnet50", backbone_options={"weights": "V3"}
        )


def test_a_checkpoint_of_another_network_is_refused(torch_home: Path, tmp_path: Path) -> None:
    fabricate_torchvision(torch_home, "resnet34", "resnet18-f37072fd.pth")
    with pytest.raises(DmtError, match="not a resnet18 state dict"):
        open_store(tmp_path / "s").init(
            "3x32x32", backbone="resnet18", backbone_options={"weights": "imagenet"}
        )
    assert not (tmp_path / "s" / "CURRENT").exists()


def test_a_pickle_that_is_not_only_tensors_is_not_executed(
    torch_home: Path, tmp_path: Path
) -> None:
    """torch's weights-only loader refuses arbitrary objects: nothing in the file runs."""
    import pickle

    target = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    target.write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    with pytest.raises(DmtError, match="not a readable resnet18 checkpoint"):
        open_store(tmp_path / "s").init(
            "3x32x32", backbone="resnet18", backbone_options={"weights": "imagenet"}
        )
    assert not marker.exists()


def test_timm_weights_come_from_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model.safetensors where huggingface_hub keeps it (models--timm--NAME/snapshots/REV,
    refs/main naming REV); HF_HUB_OFFLINE proves nothing is fetched."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    folder = hub / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.manual_seed(5)
    state = {
        k: v + 0.25
        for k, v in timm.create_model("resnet18").state_dict().items()
        if v.is_floating_point()
    }
    save_file(state, str(snapshot / "model.safetensors"))

    path = tmp_path / "store"
    store = open_store(path, plugins=[PLUGIN], tracking=False)
    record = store.init(
        "3x32x32", backbone="timm:resnet18", backbone_options={"weights": "imagenet"}
    )
    assert record["manifest"]["backbone"]["pretrained"]["name"].startswith(repo)
    store.add_task("tiny.left", init_from="none", freeze_stages=1, **FAST)
    model = load_model(Store.open(path), Store.open(path).manifest(), create_plugin_host().kinds)
    assert torch.equal(model.part("tiny.left", "column").stages[0][0].weight, state["conv1.weight"])


def test_vits_are_refused_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    with pytest.raises(InvalidValueError, match="convolutional"):
        open_store(tmp_path / "s").init("3x32x32", backbone="timm:vit_tiny_patch16_224")


def test_freeze_stages_beyond_the_column_is_refused_by_value(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = open_store(path, plugins=[PLUGIN], tracking=False)
    store.init("3x32x32", backbone="resnet18")
    with pytest.raises(InvalidValueError, match=r"it has 4 stages .*valid: 0 to 3"):
        store.add_task("tiny.left", freeze_stages=4, **FAST)
    assert Store.open(path).manifest()["tasks"] == []


def test_dmt_backbones_lists_stages_for_an_input(run_cli) -> None:
    result = run_cli("backbones", "resnet50", "--input", "3x224x224")
    assert "256/4 512/8 1024/16 2048" in result.stdout
    rows = list_backbones("3x128x128", ["resnet50"], {"dilated": True})
    assert [s["reduction"] for s in rows[0]["stages"]] == [4, 8, 8, 8]
    everything = {r["name"] for r in list_backbones()}
    assert set(TORCHVISION) | {"dmt-cnn", "timm:MODEL"} <= everything


def test_a_pretrained_store_serves_from_the_registry_and_grows_after_a_pull(
    torch_home: Path, new_store_dir: Path, tmp_path: Path, run_cli, monkeypatch
) -> None:
    """The registered model applies the recorded normalisation (it predicts as `dmt predict`
    does), and its artifact carries the initial column: a pulled store adds a task from the
    pretrained weights with the cache gone."""
    import json

    import mlflow.pyfunc
    import numpy as np

    state = fabricate_torchvision(torch_home, "resnet18", "resnet18-f37072fd.pth")
    store, uri = new_store_dir, f"sqlite:///{new_store_dir / 'mlflow.db'}"
    common = ["--store", store, "-p", PLUGIN]
    run_cli("init", *common, "--input", "3x32x32", "--backbone", "resnet18",
            "--backbone-option", "weights=imagenet")  # fmt: skip
    run_cli("add-task", "tiny.left", *common, "--epochs", "1", "--batch-size", "8")
    (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").unlink()
    batch = tmp_path / "batch.npy"
    np.save(batch, np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32))
    expected = json.loads(run_cli("predict", batch, "--store", store, "--json").stdout)["tasks"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    frame = mlflow.pyfunc.load_model("models:/store@current").predict(np.load(batch))
    assert list(frame["tiny.left"]) == expected["tiny.left"]["prediction"]

    pulled = tmp_path / "pulled"
    run_cli("pull", "models:/store@current", "--store", pulled, "--tracking-uri", uri)
    run_cli("add-task", "tiny.top", "--store", pulled, "-p", PLUGIN, "--no-tracking",
            "--init-from", "none", "--freeze-stages", "1", "--epochs", "1", "--batch-size", "8")  # fmt: skip
    model = load_model(
        Store.open(pulled), Store.open(pulled).manifest(), create_plugin_host().kinds
    )
    assert torch.equal(model.part("tiny.top", "column").stages[0][0].weight, state["conv1.weight"])
