"""First-layer filters from the ONNX initializers and intermediate feature maps via added outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers_evaluate import conv2d_reference, conv_model, linear_model
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.evaluation.activations import activation_mosaic, compute_activations
from cvtool.evaluation.filters import filter_mosaic, plot_filters
from cvtool.images import load_and_preprocess
from cvtool.infer.session import open_model
from cvtool.onnxtools.layers import ActivationError, list_layers
from cvtool.onnxtools.weights import FilterError, first_conv_weights

runner = CliRunner()
RNG = np.random.default_rng(0)
W1 = RNG.normal(0, 1, (10, 3, 3, 3)).astype(np.float32)
W2 = RNG.normal(0, 1, (4, 10, 3, 3)).astype(np.float32)


@pytest.mark.parametrize(("mode", "tol"), [("float", 0), ("fp16", 2e-3), ("int8", 0.02)])
def test_first_conv_weights_are_read_from_the_file(tmp_path, mode, tol):
    path = conv_model(tmp_path / "m.onnx", W1, second=W2, weight_mode=mode)
    name, w = first_conv_weights(path)
    assert name == "conv1.weight" and w.shape == W1.shape and w.dtype == np.float32
    np.testing.assert_allclose(w, W1, atol=tol * np.abs(W1).max())


def test_filter_grid_shape_matches_the_first_conv(tmp_path):
    for weights in (W1, RNG.normal(0, 1, (7, 1, 5, 5)).astype(np.float32)):
        o, c, kh, kw = weights.shape
        mosaic = filter_mosaic(weights)
        cols = math.ceil(math.sqrt(o))
        rows = math.ceil(o / cols)
        assert mosaic.shape == (rows * (kh + 1) - 1, cols * (kw + 1) - 1, *((3,) if c == 3 else ()))
        top = np.abs(weights).max()
        for i in range(o):
            r, q = divmod(i, cols)
            tile = mosaic[r * (kh + 1) : r * (kh + 1) + kh, q * (kw + 1) : q * (kw + 1) + kw]
            expected = 0.5 + 0.5 * weights[i] / top
            np.testing.assert_allclose(
                tile, expected.transpose(1, 2, 0) if c == 3 else expected[0], atol=1e-6
            )
        assert np.isnan(mosaic[kh]).all()  # the gap row between tiles


def _folded_first_conv(ckpt_path):
    """The exported model's first conv from PyTorch: raw weights, and with BatchNorm folded in."""
    import torch

    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["model"]
    names = list(state)
    conv = next(n for n in names if state[n].ndim == 4)
    prefix = conv.rsplit(".", 2)[0]
    raw = state[conv].numpy()
    bn = next((n.rsplit(".", 1)[0] for n in names if n.endswith("running_var")), None)
    folded = None
    if bn and bn.startswith(prefix):
        scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + 1e-5)
        folded = (state[conv] * scale[:, None, None, None]).numpy()
    return raw, folded


def test_exported_model_filters_equal_pytorch(rgb_model):
    _, w = first_conv_weights(rgb_model)
    raw, folded = _folded_first_conv(rgb_model.with_suffix(".pt"))
    assert w.shape == raw.shape
    assert np.allclose(w, raw, atol=1e-5) or (folded is not None and np.allclose(w, folded, atol=1e-5))


def test_plot_filters_and_cli(rgb_model, tmp_path):
    other = conv_model(tmp_path / "other.onnx", RNG.normal(0, 1, (32, 3, 3, 3)).astype(np.float32))
    png, found = plot_filters([rgb_model, other], tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and [w.shape for _, w in found] == [(32, 3, 3, 3)] * 2
    r = runner.invoke(
        app, ["filters", str(rgb_model), "--compare", str(other), "-o", str(tmp_path / "g.png")]
    )
    assert r.exit_code == 0, r.output
    assert "(32, 3, 3, 3)" in r.output and (tmp_path / "g.png").is_file()
    no_conv = linear_model(tmp_path / "lin.onnx", ("a", "b"))
    with pytest.raises(FilterError, match="no Conv"):
        first_conv_weights(no_conv)
    r = runner.invoke(app, ["filters", str(no_conv), "-o", str(tmp_path / "h.png")])
    assert r.exit_code == 2 and "no Conv" in r.output
    r = runner.invoke(app, ["filters", str(tmp_path / "missing.onnx")])
    assert r.exit_code == 2 and "not found" in r.output


def test_activations_equal_a_reference_convolution(tmp_path):
    path = conv_model(tmp_path / "m.onnx", W1, size=9, second=W2)
    x = RNG.normal(0, 1, (3, 9, 9)).astype(np.float32)
    acts = compute_activations(path, x, ["conv1_out", "relu1", "conv2", "relu2"])
    conv1 = conv2d_reference(x, W1)
    np.testing.assert_allclose(acts["conv1_out"], conv1, atol=1e-4)
    np.testing.assert_allclose(acts["relu1"], np.maximum(conv1, 0), atol=1e-4)
    conv2 = conv2d_reference(np.maximum(conv1, 0), W2)
    np.testing.assert_allclose(acts["conv2"], conv2, atol=1e-3)  # node name → its output
    np.testing.assert_allclose(acts["relu2"], np.maximum(conv2, 0), atol=1e-3)
    with pytest.raises(ActivationError, match="nope"):
        compute_activations(path, x, ["nope"])
    with pytest.raises(ActivationError, match="feature maps"):
        compute_activations(path, x, ["logits"])


def test_activations_of_an_exported_model_equal_pytorch_modules(rgb_model, shapes_train):
    import torch

    from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint

    net, card = model_from_checkpoint(load_checkpoint(rgb_model.with_suffix(".pt")))
    # The first BatchNorm and the first ReLU, whatever the architecture numbers them.
    bn = next(n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    relu = next(n for n, m in net.named_modules() if isinstance(m, torch.nn.ReLU))
    seen = {}
    for name in (bn, relu):
        net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.clone())
        )
    x = load_and_preprocess(shapes_train / "circle" / "2.png", card)
    with torch.no_grad():
        net(torch.from_numpy(x[None]))
    acts = compute_activations(rgb_model, x, [bn, relu])
    for name in (bn, relu):
        np.testing.assert_allclose(acts[name], seen[name][0].numpy(), atol=1e-4)
    modules = {m for layer in list_layers(rgb_model) for m in layer.modules}
    assert {bn, relu} <= modules


def test_activation_mosaic_scales_each_channel():
    a = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 3.0), -np.arange(16.0).reshape(4, 4)])
    m = activation_mosaic(a)
    assert m.shape == (2 * 5 - 1, 2 * 5 - 1)
    np.testing.assert_allclose(m[:4, :4], np.arange(16).reshape(4, 4) / 15)
    np.testing.assert_allclose(m[:4, 5:], 0)  # a constant channel
    np.testing.assert_allclose(m[5:, :4], (15 - np.arange(16).reshape(4, 4)) / 15)
    assert np.isnan(m[5:, 5:]).all()


def test_cli_activations(rgb_model, shapes_train, tmp_path):
    r = runner.invoke(app, ["activations", str(rgb_model), "--list-layers"])
    assert r.exit_code == 0, r.output
    assert "Relu" in r.output and "N×32×32×32" in r.output
    relu = next(layer for layer in list_layers(rgb_model) if layer.op == "Relu")
    image = shapes_train / "square" / "0.png"
    out = tmp_path / "acts"
    r = runner.invoke(
        app, ["activations", str(rgb_model), str(image), "--layer", relu.tensor, "-o", str(out)]
    )
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].endswith(".npy") and files[1].endswith(".png")
    card = open_model(rgb_model, device="cpu").card
    expected = compute_activations(rgb_model, load_and_preprocess(image, card), [relu.tensor])[relu.tensor]
    np.testing.assert_array_equal(np.load(out / files[0]), expected)
    r = runner.invoke(app, ["activations", str(rgb_model), str(image), "--layer", "nope", "-o", str(out)])
    assert r.exit_code == 2 and "nope" in r.output and "--list-layers" in r.output
    r = runner.invoke(app, ["activations", str(rgb_model), "--layer", relu.tensor])
    assert r.exit_code == 2 and "IMAGE" in r.output
