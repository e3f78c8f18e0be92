"""`--amp auto`: bf16 autocast exactly where the CPU or GPU computes bf16."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from cvtool.train import amp as amp_mod  # noqa: E402
from cvtool.train.amp import cpu_bf16_units, resolve_amp  # noqa: E402
from cvtool.train.config import TrainConfig  # noqa: E402


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return p


def test_cpu_units_from_cpuinfo(tmp_path):
    assert cpu_bf16_units(_cpuinfo(tmp_path, "avx512f avx512_vnni")) == []
    both = _cpuinfo(tmp_path, "avx512f avx512_bf16 amx_bf16 amx_tile")
    assert cpu_bf16_units(both) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_units(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("flags", "expected"), [("avx512_vnni", "off"), ("avx512_bf16", "bf16"), ("amx_bf16 amx_int8", "bf16")]
)
def test_auto_on_the_cpu_follows_the_bf16_units(tmp_path, monkeypatch, flags, expected):
    info = _cpuinfo(tmp_path, flags)
    monkeypatch.setattr(amp_mod, "cpu_bf16_units", lambda: cpu_bf16_units(info))
    amp, why = resolve_amp("auto", torch.device("cpu"))
    assert amp == expected and why.startswith("auto: ")
    assert ("AVX512_BF16" in why or "AMX_BF16" in why) == (expected == "bf16")


def test_explicit_settings_pass_through():
    for setting in ("off", "bf16", "fp16"):
        assert resolve_amp(setting, torch.device("cpu")) == (setting, "")


def test_auto_on_cuda_asks_for_native_bf16(monkeypatch):
    def native_only(including_emulation=True):
        return not including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native_only)
    assert resolve_amp("auto", torch.device("cuda"))[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_amp("auto", torch.device("cuda"))[0] == "off"


def test_auto_is_the_default():
    assert TrainConfig(data="d", out="o").amp == "auto"
