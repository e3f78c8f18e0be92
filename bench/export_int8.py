"""INT8 vs float32: speed on ResNet-18 at 224², accuracy on Fashion-MNIST; which settings to ship.

    python bench/export_int8.py resnet [--threads 2] [--batch 32]            # speed per setting
    python bench/export_int8.py fmnist [--ckpt runs/export_bench/best.pt]    # top-1 per setting
    python bench/export_int8.py all --record                                # both; append to RESULTS.md

Settings compared (cvtool.onnxtools.quantize.QuantSettings), all static, MinMax-calibrated:
QDQ with int8 activations (ONNX Runtime's default), QDQ with uint8 activations at full and at
reduced range, per-tensor weights, and the QOperator format. Targets on a 2-core CPU: INT8 ≥ 1.8×
float32 images/s on ResNet-18 (batch 32, same threads) and a top-1 drop ≤ 0.3 points.

1. ResNet-18 (torchvision, random weights: speed does not depend on them) exported by cvtool at
   224², calibrated on 64 generated photo-like images. Each model's images/s is the median batch
   time over `--seconds` of runs; the models are measured in turns, `--rounds` times, and the best
   round is kept, so a burst of load elsewhere hurts every model alike.
2. Fashion-MNIST: the checkpoint is exported, quantized with 256 calibration images sampled from
   the train split, and every model is run over the 10,000 test images through the shared
   preprocessing: top-1 of float32 and of INT8, and their top-1 agreement. A checkpoint can be
   made with `cvtool train data/fashion-mnist/train --epochs 3 --out runs/export_bench`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {  # label → QuantSettings keyword arguments
    "QDQ s8 act, per-channel (ORT default types)": dict(activations="int8", reduce_range=False),
    "QDQ u8 act, per-channel, full range": dict(reduce_range=False),
    "QDQ u8 act, per-channel, reduced range (cvtool default)": dict(),
    "QDQ u8 act, per-tensor, reduced range": dict(per_channel=False),
    "QOperator u8 act, per-channel, reduced range": dict(format="qoperator"),
}


def machine() -> str:
    model, flags = platform.processor() or "unknown CPU", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name"))
        flags = next(ln for ln in info.splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        pass
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    import onnxruntime as ort

    return (
        f"{model}, {os.cpu_count()} logical CPUs, VNNI {'yes' if vnni else 'no'}, "
        f"AVX-512 {'yes' if 'avx512f' in flags else 'no'}; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}"
    )


def photo_like(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n smooth, noisy RGB images of 256×256 (calibration input for the ImageNet-sized model)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    paths = []
    for i in range(n):
        waves = [np.sin(xx / rng.uniform(10, 60) + c) * np.cos(yy / rng.uniform(10, 60)) for c in range(3)]
        a = (127 + 90 * np.stack(waves, -1) + rng.normal(0, 15, (256, 256, 3))).clip(0, 255)
        p = folder / f"{i}.jpg"
        Image.fromarray(a.astype(np.uint8), "RGB").save(p, quality=90)
        paths.append(p)
    return paths


def bench_resnet(work: Path, threads: int, batch: int, seconds: float, rounds: int) -> str:
    import torch
    import torchvision

    from cvtool.contract import ModelCard
    from cvtool.export.onnx_export import export_onnx
    from cvtool.infer.compare import throughput
    from cvtool.infer.session import open_model
    from cvtool.onnxtools.model_file import save_onnx
    from cvtool.onnxtools.quantize import QuantSettings, quantize_model

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    card = ModelCard(class_names=[f"c{i}" for i in range(1000)], input_size=(224, 224))
    fp32 = work / "resnet18.onnx"
    model, _ = export_onnx(net, card)
    save_onnx(model, fp32)
    calib = photo_like(work / "calib", 64)
    paths = {"float32": fp32}
    for i, (label, kw) in enumerate(SETTINGS.items()):
        paths[label] = work / f"resnet18.int8.{i}.onnx"
        quantize_model(fp32, paths[label], calib, settings=QuantSettings(**kw))
        print(f"quantized: {label}", file=sys.stderr)
    models = {k: open_model(p, device="cpu", threads=threads) for k, p in paths.items()}
    best = {k: 0.0 for k in models}
    for r in range(rounds):
        for k, m in models.items():
            best[k] = max(best[k], throughput(m, batch, min_seconds=seconds))
        print(f"round {r + 1}: " + ", ".join(f"{v:.1f}" for v in best.values()), file=sys.stderr)
    lines = [
        f"ResNet-18, 224², batch {batch}, {threads} ONNX Runtime threads (best of {rounds} rounds):",
        "",
        "| model | images/s | × float32 |",
        "|---|---:|---:|",
    ]
    for k, v in best.items():
        lines.append(f"| {k} | {v:.1f} | {v / best['float32']:.2f} |")
    return "\n".join(lines)


def bench_fmnist(work: Path, ckpt: Path, data: Path, threads: int, calib_n: int) -> str:
    from cvtool.export.onnx_export import export_checkpoint
    from cvtool.infer.compare import compare_predictions, throughput, verification_set
    from cvtool.infer.session import open_model
    from cvtool.onnxtools.quantize import QuantSettings, calibration_files, quantize_model

    if not ckpt.is_file():
        sys.exit(
            f"{ckpt}: no checkpoint; train one: cvtool train {data}/train --epochs 3 --out {ckpt.parent}"
        )
    fp32 = work / "fmnist.onnx"
    export_checkpoint(ckpt, fp32)
    ref = open_model(fp32, device="cpu", threads=threads)
    files, labels = verification_set(data / "test", ref.card.class_names, data / "test_labels.csv")
    calib = calibration_files(data / "train", calib_n)
    fps_ref = throughput(ref, 32)
    lines = [
        f"Fashion-MNIST test split ({len(files):,} images), checkpoint `{ckpt}`, {len(calib)} calibration "
        f"images from the train split; images/s: batch 32, {threads} threads:",
        "",
        "| model | top-1 float32 | top-1 INT8 | Δ points | top-1 agreement | images/s (× float32) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, (label, kw) in enumerate(SETTINGS.items()):
        out = work / f"fmnist.int8.{i}.onnx"
        quantize_model(fp32, out, calib, settings=QuantSettings(**kw))
        low = open_model(out, device="cpu", threads=threads)
        comp = compare_predictions(files, ref.card, ref.run, low.run, labels)
        fps = throughput(low, 32)
        delta = 100 * (comp.accuracy_cand - comp.accuracy_ref)
        lines.append(
            f"| {label} | {comp.accuracy_ref:.2%} | {comp.accuracy_cand:.2%} | {delta:+.2f} | "
            f"{comp.agreement:.2%} | {fps:,.0f} ({fps / fps_ref:.2f}) |"
        )
        print(f"evaluated: {label}", file=sys.stderr)
    lines.append(f"\nfloat32: {fps_ref:,.0f} images/s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["resnet", "fmnist", "all"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0, help="Measuring time per model and round.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ckpt", type=Path, default=ROOT / "runs" / "export_bench" / "best.pt")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "fashion-mnist")
    ap.add_argument("--calib-n", type=int, default=256)
    ap.add_argument("--work", type=Path, default=None, help="Keep the ONNX files here.")
    ap.add_argument("--note", default="", help="A line recorded with the results (e.g. machine load).")
    ap.add_argument("--record", action="store_true", help="Append the results to bench/RESULTS.md.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="cvtool-bench-int8-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        parts = []
        if args.which in ("resnet", "all"):
            parts.append(bench_resnet(work, args.threads, args.batch, args.seconds, args.rounds))
        if args.which in ("fmnist", "all"):
            parts.append(bench_fmnist(work, args.ckpt, args.data, args.threads, args.calib_n))
    command = "python bench/export_int8.py " + " ".join(sys.argv[1:])
    block = "\n".join(
        [
            f"## INT8 quantization — {datetime.date.today().isoformat()}",
            "",
            f"Machine: {machine()}.  ",
            f"Command: `{command}`" + (f"  \nNote: {args.note}" if args.note else ""),
            "",
            "\n\n".join(parts),
            "",
        ]
    )
    print(block)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + block)


if __name__ == "__main__":
    main()
