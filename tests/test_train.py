"""The training loop: LR schedules, early stopping, exact resume, frozen backbones, fine-tuning,
pretrained weights, class weights and unreadable images — asserted on recorded values."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from conftest import make_image_folder, shape_image
from sklearn.utils.class_weight import compute_class_weight
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluation.runs import lr_drops
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint
from cvtool.train.config import TrainConfig, resolve_config
from cvtool.train.datasets import balanced_class_weights
from cvtool.train.loop import config_from_checkpoint, train
from cvtool.train.models import create_model
from cvtool.train.transfer import WeightsError, load_matching, read_state_dict

QUIET = dict(log=lambda _: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("train") / "shapes", per_class=12, seed=3)


def cfg_for(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="mlp", epochs=2, batch_size=8, workers=0, val_split=0.25)
    return TrainConfig(**{**base, **kw})


def test_plateau_halves_the_lr_after_the_patience(data, tmp_path):
    # Plain SGD at a learning rate so small that the validation loss cannot improve by
    # ReduceLROnPlateau's relative threshold (1e-4), yet large enough that halving it changes it by
    # more than the scheduler's eps (1e-8): every epoch after the first is "no improvement".
    cfg = cfg_for(data, tmp_path, epochs=5, optimizer="sgd", momentum=0.0, lr=1e-7, dropout=0.0,
                  schedule="plateau", plateau_patience=2, monitor="val_loss")  # fmt: skip
    rows = train(cfg, **QUIET).epochs
    lrs = [r["lr"] for r in rows]
    # Epoch 1 sets the best; epochs 2, 3, 4 do not improve; after the third (> patience) the LR halves.
    assert lrs == pytest.approx([1e-7, 1e-7, 1e-7, 1e-7, 5e-8], rel=1e-12)
    recorded = [float(r["lr"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())]
    assert recorded == pytest.approx(lrs, rel=1e-12)
    assert lr_drops(rows, "plateau") == [5]  # where curves.png draws its dashed line
    assert (tmp_path / "curves.png").stat().st_size > 0

    # The same LRs from torch's scheduler fed the recorded validation losses directly.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-7)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2)
    expected = []
    for r in rows:
        expected.append(opt.param_groups[0]["lr"])
        ref.step(r["val_loss"])
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_early_stopping_stops_after_patience_epochs_without_improvement(data, tmp_path):
    # So small a learning rate that the validation accuracy cannot move.
    cfg = cfg_for(
        data, tmp_path, epochs=30, optimizer="sgd", lr=1e-9, dropout=0.0, patience=2, monitor="val_acc"
    )
    result = train(cfg, **QUIET)
    rows = result.epochs
    # Reference: a plain loop over the recorded accuracies.
    best, wait, stop = -1.0, 0, None
    for r in rows:
        if r["val_acc"] > best:
            best, wait = r["val_acc"], 0
        else:
            wait += 1
        if wait >= 2:
            stop = r["epoch"]
            break
    assert result.stopped_early and stop == rows[-1]["epoch"] < 30


def _interrupt_at(epoch):
    def hook(e, _row):
        if e == epoch:
            raise KeyboardInterrupt

    return hook


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(data, tmp_path):
    """Dropout, batch-norm, random augmentation, one-cycle AdamW: all must continue exactly."""
    settings = dict(arch="simple_cnn", epochs=3, optimizer="adamw", lr=3e-3, weight_decay=0.01,
                    schedule="onecycle", augment="light", label_smoothing=0.1)  # fmt: skip
    train(cfg_for(data, tmp_path / "full", **settings), **QUIET)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(data, tmp_path / "cut", **settings), **QUIET, on_epoch_end=_interrupt_at(2))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    cfg, state = config_from_checkpoint(tmp_path / "cut")
    train(cfg, **QUIET, resume=state)

    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["epoch"] == full["epoch"] == 3
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    keys = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in resumed["history"]] == [
        [r[k] for k in keys] for r in full["history"]
    ]
    rows = list(csv.DictReader((tmp_path / "cut" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_resume_from_the_cli(data, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(data, run, epochs=2), **QUIET, on_epoch_end=_interrupt_at(1))
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert "resuming at epoch 2 of 2" in r.output
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "checkpoint not found" in r.output


def _split_state(state, prefix):
    head = {k: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if k not in head}, head


def test_freeze_backbone_leaves_it_unchanged_until_unfreeze(data, tmp_path):
    torch.manual_seed(0)  # train() seeds 0 and builds the model first thing: the same initial weights
    init = create_model("simple_cnn", 3, 3, (32, 32)).state_dict()
    snapshots = {}

    def snap(epoch, _row):
        snapshots[epoch] = load_checkpoint(tmp_path / "last.pt")

    cfg = cfg_for(data, tmp_path, arch="simple_cnn", epochs=3, freeze="backbone", unfreeze_at=3, lr=3e-3)
    train(cfg, **QUIET, on_epoch_end=snap)
    init_backbone, init_head = _split_state(init, "classifier.")
    for epoch in (1, 2):
        backbone, head = _split_state(snapshots[epoch]["model"], "classifier.")
        for k, v in init_backbone.items():  # weights and batch-norm running statistics alike
            assert torch.equal(v, backbone[k]), (epoch, k)
        assert any(not torch.equal(v, head[k]) for k, v in init_head.items() if v.is_floating_point())
        assert set(snapshots[epoch]["frozen"]) == {k for k in init_backbone if "running" not in k
                                                   and "num_batches" not in k}  # fmt: skip
    backbone3, _ = _split_state(snapshots[3]["model"], "classifier.")
    assert not torch.equal(backbone3["features.0.weight"], init_backbone["features.0.weight"])
    assert snapshots[3]["frozen"] == []


def test_init_from_swaps_the_head_for_the_new_classes(data, tmp_path):
    train(cfg_for(data, tmp_path / "src", arch="simple_cnn", epochs=1), **QUIET)
    src = load_checkpoint(tmp_path / "src" / "best.pt")
    two = tmp_path / "two"
    for name in ("circle", "stripes"):  # a different class set: 2 of the 3 classes
        shutil.copytree(data / name, two / name)
    # cfg_for says arch="mlp": the checkpoint's arch wins (the CLI refuses the contradiction).
    cfg = cfg_for(two, tmp_path / "dst", epochs=1, init_from=str(tmp_path / "src" / "best.pt"),
                  freeze="backbone")  # fmt: skip
    train(cfg, **QUIET)
    dst = load_checkpoint(tmp_path / "dst" / "best.pt")
    assert dst["arch"] == "simple_cnn" and dst["config"]["arch"] == "simple_cnn"
    net, card = model_from_checkpoint(dst)
    assert card.class_names == ("circle", "stripes")
    assert net.classifier[-1].out_features == 2
    backbone_src, _ = _split_state(src["model"], "classifier.")
    backbone_dst, head_dst = _split_state(dst["model"], "classifier.")
    for k, v in backbone_src.items():  # pretrained backbone carried over, frozen
        assert torch.equal(v, backbone_dst[k]), k
    assert head_dst["classifier.4.weight"].shape == (2, 256)


def test_weights_file_loads_by_name_and_adapts_a_gray_stem(tmp_path):
    torch.manual_seed(1)
    imagenet_like = create_model("resnet18", 1000, 3, (224, 224)).state_dict()  # a torchvision layout
    torch.save(imagenet_like, tmp_path / "r18.pth")
    state = read_state_dict(tmp_path / "r18.pth", "resnet18")
    net = create_model("resnet18", 4, 1, (96, 96))  # 1 channel, large input: standard 7×7 stem
    loaded, fresh = load_matching(net, state)
    got = net.state_dict()
    assert torch.equal(got["layer3.1.conv2.weight"], imagenet_like["layer3.1.conv2.weight"])
    # A gray image through the summed kernel == the RGB kernel on that gray image replicated.
    assert torch.allclose(got["conv1.weight"], imagenet_like["conv1.weight"].sum(1, keepdim=True))
    assert {f.split(" ")[0] for f in fresh} == {"fc.weight", "fc.bias"}
    assert len(loaded) == len(got) - 2

    # A cvtool checkpoint works as --weights too; the wrapped "model" dict is found.
    ckpt = {"format": "cvtool.checkpoint", "model": {"module." + k: v for k, v in imagenet_like.items()}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    assert torch.equal(
        read_state_dict(tmp_path / "ckpt.pt", "resnet18")["fc.weight"], imagenet_like["fc.weight"]
    )


def test_weights_through_training_small_stem_stays_trainable(data, tmp_path):
    torch.manual_seed(1)
    saved = create_model("resnet18", 1000, 3, (224, 224)).state_dict()
    torch.save(saved, tmp_path / "r18.pth")
    weights = str(tmp_path / "r18.pth")
    cfg = cfg_for(
        data, tmp_path / "run", arch="resnet18", epochs=1, subset=8, weights=weights, freeze="backbone"
    )
    lines = []
    train(cfg, log=lines.append)
    assert any("kept fresh" in ln and "conv1.weight (64, 3, 7, 7)→(64, 3, 3, 3)" in ln for ln in lines), lines
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    for k in ("layer1.0.conv1.weight", "layer4.1.bn2.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(ckpt["model"][k], saved[k]), k  # loaded and frozen
    assert "conv1.weight" not in ckpt["frozen"]  # the new 3×3 stem has nothing to keep: it trains


def test_weight_names_resolve_through_torchvision_or_fail_clearly(monkeypatch):
    with pytest.raises(WeightsError, match="simple_cnn has no torchvision weights"):
        read_state_dict("IMAGENET1K_V1", "simple_cnn")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1 \\(ResNet18_Weights.IMAGENET1K_V1\\)"):
        read_state_dict("IMAGENET1K_V9", "resnet18")
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict("missing/weights.pth", "resnet18")
    from torchvision.models import ResNet18_Weights

    def offline(self, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(
        WeightsError, match="cannot download ResNet18_Weights.IMAGENET1K_V1 .*network unreachable"
    ):
        read_state_dict("ResNet18_Weights.DEFAULT", "resnet18")


def test_balanced_class_weights_match_scikit_learn():
    labels = [0] * 50 + [1] * 5 + [2] * 20
    ref = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    np.testing.assert_allclose(balanced_class_weights(labels, 3).numpy(), ref, rtol=1e-6)
    w = balanced_class_weights([0, 0, 2], 3)  # a class absent from the training split weighs 0
    assert w[1] == 0 and w[0] * 2 == pytest.approx(w[2] * 1)


def test_recipe_precedence_and_validation():
    cfg = resolve_config({"data": "d", "out": "o", "epochs": 3}, "fashion-mnist")
    assert (cfg.arch, cfg.optimizer, cfg.schedule, cfg.epochs, cfg.hflip) == (
        "cnn4",
        "adamw",
        "onecycle",
        3,
        True,
    )
    assert cfg.recipe == "fashion-mnist"
    assert resolve_config({"data": "d", "out": "o"}).arch == "simple_cnn"
    with pytest.raises(ValueError, match="--schedule must be one of"):
        resolve_config({"data": "d", "out": "o", "schedule": "linear"})
    with pytest.raises(ValueError, match="--unfreeze-at needs --freeze backbone"):
        resolve_config({"data": "d", "out": "o", "unfreeze_at": 3})
    with pytest.raises(ValueError, match="unknown --recipe"):
        resolve_config({"data": "d", "out": "o"}, "imagenet")


def test_unreadable_training_image_is_reported_and_skipped(data, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    (bad / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["--arch", "mlp", "--epochs", "2", "--workers", "0", "--val-split", "0.25"]
    r = CliRunner().invoke(app, ["train", str(bad), "--out", str(tmp_path / "run"), *args])
    assert r.exit_code == 1, r.output
    assert r.output.count("skipped unreadable training image") + r.output.count("broken.png: ") >= 1
    assert "broken.png" in r.output and (tmp_path / "run" / "best.pt").exists()
    assert len(list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))) == 2


def _unboxed(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_cli_lists_archs_and_rejects_bad_options(data, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--list-archs"])
    assert r.exit_code == 0
    for arch in ("mlp", "simple_cnn", "vgg_small", "cnn4", "resnet18", "resnet34", "alexnet", "vgg16"):
        assert f"\n{arch} " in "\n" + r.output
    # Fixed choices are refused by the parser, which lists them (the error box may wrap lines).
    r = runner.invoke(app, ["train", str(data), "--arch", "lenet", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "'lenet' is not one of 'mlp', 'simple_cnn'," in _unboxed(r.output)
    r = runner.invoke(app, ["train", str(data), "--optimizer", "rmsprop", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "'rmsprop' is not one of 'sgd', 'adam', 'adamw'" in _unboxed(r.output)
    r = runner.invoke(app, ["train", str(data), "--amp", "fp16", "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--amp fp16 needs a CUDA device" in r.output


def test_val_dir_replaces_the_split_and_must_use_the_training_classes(data, tmp_path):
    val = make_image_folder(tmp_path / "val", per_class=2, seed=9)
    lines = []
    train(cfg_for(data, tmp_path / "run", epochs=1, val_dir=str(val)), log=lines.append)
    assert "data: 36 train / 6 val images, 3 classes" in lines
    (val / "triangle").mkdir()
    shape_image("circle", np.random.default_rng(0)).save(val / "triangle" / "0.png")
    r = CliRunner().invoke(app, ["train", str(data), "--val-dir", str(val), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "['triangle'] are not classes" in r.output


def test_bf16_autocast_on_the_cpu_trains(data, tmp_path):
    lines = []
    result = train(cfg_for(data, tmp_path, arch="cnn4", epochs=1, amp="bf16", lr=3e-3), log=lines.append)
    assert any("amp bf16" in ln for ln in lines)
    assert np.isfinite(result.epochs[0]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values())  # fp32 weights kept
