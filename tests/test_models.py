"""The architecture registry: every arch trains a step through `train` and exports with parity;
small-image and large-image variants have the shapes they promise; --init schemes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_image_folder
from PIL import Image
from torch import nn

from cvtool.export.onnx_export import export_checkpoint
from cvtool.infer.session import open_model
from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint
from cvtool.train.config import TrainConfig
from cvtool.train.loop import train
from cvtool.train.models import ARCHS, arch_names, create_model, head_module
from cvtool.train.weight_init import NORMAL_STD, init_weights


@pytest.fixture(scope="module")
def gray28(tmp_path_factory):
    """28×28 grayscale shapes (MNIST-sized): the small-image variants and 1-channel stems."""
    root = make_image_folder(tmp_path_factory.mktemp("gray28") / "train", per_class=4, mode="L")
    for p in root.rglob("*.png"):  # the generator draws 32 px; MNIST is 28
        Image.open(p).resize((28, 28)).save(p)
    return root


def test_registry_has_the_course_archs():
    assert {"mlp", "simple_cnn", "vgg_small", "resnet18", "resnet34", "alexnet", "vgg16"} <= set(ARCHS)
    for name in ARCHS:
        net = create_model(name, 5, 3, (32, 32))
        last = [m for m in head_module(net, name).modules() if isinstance(m, nn.Linear)][-1]
        assert last.out_features == 5, name
        assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 5), name


def test_the_choices_the_cli_offers_are_those_the_code_has():
    """--arch, --recipe, --augment and --init are Literal types kept beside torch-free code."""
    from typing import get_args

    from cvtool.train.augment import PRESETS
    from cvtool.train.config import RECIPES, ArchName, AugmentPreset, RecipeName

    assert list(get_args(ArchName)) == list(ARCHS)  # the registry's names, in --help's order
    assert set(get_args(RecipeName)) == set(RECIPES)
    assert set(get_args(AugmentPreset)) == set(PRESETS)


@pytest.mark.parametrize("arch", arch_names())
def test_every_arch_trains_a_step_and_exports(arch, gray28, tmp_path):
    """One optimiser step through `train` on 28×28 gray images, then export: ORT == PyTorch."""
    cfg = TrainConfig(
        data=str(gray28), out=str(tmp_path / "run"), arch=arch, epochs=1, batch_size=16, subset=8,
        val_split=0.25, workers=0, lr=1e-3,
    )  # fmt: skip
    result = train(cfg, log=lambda _: None)
    assert len(result.epochs) == 1 and math.isfinite(result.epochs[0]["train_loss"])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {1.0}  # exactly one optimiser step (8 images, batch 16)
    torch.manual_seed(cfg.seed)  # train() seeds, then builds the model: the same initial weights
    init = create_model(arch, len(CLASSES), 1, (28, 28), **ckpt["arch_kwargs"]).state_dict()
    changed = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert changed, "no weight moved"

    onnx_path = tmp_path / f"{arch}.onnx"
    export_checkpoint(tmp_path / "run" / "best.pt", onnx_path)
    net, card = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "best.pt"))
    assert (card.channels, card.input_size) == (1, (28, 28))
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    got = open_model(onnx_path, device="cpu").run(x)
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_resnet_small_image_stem(arch):
    small = create_model(arch, 10, 3, (32, 32))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = create_model(arch, 10, 1, (96, 96))
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2) and big.conv1.in_channels == 1
    assert isinstance(big.maxpool, nn.MaxPool2d)
    # The small stem keeps resolution: layer4 sees 32 / 8 = 4 px instead of 1.
    shapes = []
    small.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)) and None)
    small.eval()(torch.zeros(1, 3, 32, 32))
    assert shapes == [(1, 512, 4, 4)]


def test_alexnet_and_vgg16_heads_follow_the_input_size():
    a_small = create_model("alexnet", 7, 1, (28, 28))
    assert a_small.features[0].kernel_size == (3, 3) and a_small.classifier[-1].out_features == 7
    v_small = create_model("vgg16", 7, 3, (28, 28))
    # 28 → 14 → 7 → 3 → 1: the fifth max-pool would leave nothing, so it is dropped.
    pools = [m for m in v_small.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and isinstance(v_small.features[-1], nn.Identity)
    assert v_small.eval()(torch.zeros(2, 3, 28, 28)).shape == (2, 7)
    a_big = create_model("alexnet", 7, 3, (96, 96))
    assert a_big.features[0].kernel_size == (11, 11)
    assert a_big.classifier[-1].in_features == 4096 and a_big.classifier[-1].out_features == 7
    assert a_big.eval()(torch.zeros(1, 3, 96, 96)).shape == (1, 7)


def test_dropout_is_an_arch_kwarg_and_survives_the_checkpoint(tmp_path, gray28):
    net = create_model("vgg_small", 3, 1, (28, 28), dropout=0.4)
    rates = [m.p for m in net.modules() if isinstance(m, nn.Dropout)]
    assert rates == pytest.approx([0.08, 0.16, 0.24, 0.4])  # rising to the FC layer's rate
    with pytest.raises(ValueError, match="no dropout"):
        create_model("resnet18", 3, 3, (32, 32), dropout=0.2)
    cfg = TrainConfig(data=str(gray28), out=str(tmp_path), arch="mlp", dropout=0.35, epochs=1, workers=0)
    train(cfg, log=lambda _: None)
    net, _ = model_from_checkpoint(load_checkpoint(tmp_path / "best.pt"))
    assert {m.p for m in net.modules() if isinstance(m, nn.Dropout)} == {0.35}


def _weights(net):
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_init_schemes_match_their_formulas():
    torch.manual_seed(0)
    net = init_weights(create_model("mlp", 10, 1, (28, 28)), "xavier")
    w = net[1].weight  # 784 → 512
    assert w.std().item() == pytest.approx(math.sqrt(2 / (784 + 512)), rel=0.02)
    net = init_weights(create_model("mlp", 10, 1, (28, 28)), "kaiming")
    assert net[1].weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    net = init_weights(create_model("mlp", 10, 1, (28, 28)), "normal")
    assert net[1].weight.std().item() == pytest.approx(NORMAL_STD, rel=0.02)
    net = init_weights(create_model("simple_cnn", 10, 1, (28, 28)), "zeros")
    assert all((w == 0).all() for w in _weights(net))
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() for m in bn)  # batch-norm keeps its identity init
    with pytest.raises(ValueError, match="unknown init"):
        init_weights(net, "orthogonal")


def test_zero_init_never_learns(gray28, tmp_path):
    """Zeros: every hidden unit is identical and, behind a ReLU, gets zero gradient — forever."""
    cfg = TrainConfig(
        data=str(gray28), out=str(tmp_path), arch="mlp", init="zeros", epochs=3, workers=0, lr=1e-2
    )
    train(cfg, log=lambda _: None)
    net, _ = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    assert (net[1].weight == 0).all() and (net[4].weight == 0).all()
