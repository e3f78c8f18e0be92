"""Every registered architecture exports to ONNX and verifies against PyTorch on image files."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASSES, make_image_folder
from helpers_export import save_checkpoint_for, shapes_card

from cvtool.export.onnx_export import export_checkpoint
from cvtool.infer.session import open_model
from cvtool.train.models import arch_names, create_model


@pytest.fixture(scope="module")
def verify_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("archs") / "verify", per_class=3, seed=11)


@pytest.mark.parametrize("arch", arch_names())
def test_arch_exports_and_verifies(arch, verify_dir, tmp_path):
    torch.manual_seed(0)
    card = shapes_card(size=32, extra={"arch": arch})
    net = create_model(arch, len(CLASSES), 3, (32, 32)).eval()
    for m in net.modules():  # trained-looking BatchNorm statistics, so folding them is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = save_checkpoint_for(tmp_path / f"{arch}.pt", net, arch, card)
    info = export_checkpoint(ckpt, tmp_path / f"{arch}.onnx", verify_dir=verify_dir)
    comp = info.verify
    assert comp.n == 3 * len(CLASSES) and not comp.failed
    assert comp.agreement == 1.0 and comp.max_abs_diff <= 1e-4
    assert comp.accuracy_ref == comp.accuracy_cand
    m = open_model(tmp_path / f"{arch}.onnx", device="cpu")
    assert (m.input_name, m.output_name, m.fixed_batch, m.card) == ("input", "logits", None, card)
