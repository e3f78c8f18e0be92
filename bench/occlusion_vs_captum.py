"""Occlusion through ONNX Runtime (cvtool) against Captum's `Occlusion` on the PyTorch model.

    python bench/occlusion_vs_captum.py resnet        # ResNet-18, 224², window 28, stride 14
    python bench/occlusion_vs_captum.py demo [--ckpt runs/demo/best.pt --onnx runs/demo/model.onnx]
    python bench/occlusion_vs_captum.py all --record  # both; appends the table to bench/RESULTS.md

Same model weights, image, window, stride and baseline on both sides. Reported per case:
- the Pearson correlation of cvtool's map p(original) - pixel_map with Captum's attribution on the
  softmax output (target ≥ 0.999);
- wall times and the ratio Captum ÷ cvtool, for Captum's default (one occluded copy per forward
  call) and for Captum with perturbations_per_eval equal to cvtool's batch (targets: ≥ 1.5× on
  ResNet-18, ≥ 3× on the small model);
- for ResNet-18, how close cvtool comes to the model's own floor: windows ÷ (model-only images/s
  on ready batches of the same size) — target: occlusion time within 10 % of it.

cvtool, batched Captum and the floor are timed in interleaved rounds (best of `--repeat` after a
warm-up round); Captum's one-copy-per-call default, many times slower, is timed once. ResNet-18
has random (seeded) weights: pretrained weights cannot be downloaded here, and speed and
agreement do not depend on them.
Needs the train and dev extras plus captum (`pip install captum`); benchmarks only.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import Occlusion

from cvtool.evaluation.occlusion import occlude
from cvtool.infer.session import open_model

ROOT = Path(__file__).resolve().parent.parent


def interleaved(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Best wall time of each function over `repeat` rounds, after a warm-up round.

    Rounds run every function in turn, so a burst of load from elsewhere on a shared machine
    hits all of them alike instead of one.
    """
    best = dict.fromkeys(fns, float("inf"))
    out = {}
    for rnd in range(repeat + 1):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            out[key] = fn()
            if rnd:  # round 0 warms up caches, memory pools and thread pools
                best[key] = min(best[key], time.perf_counter() - t0)
    return best, out


def compare(name: str, net: torch.nn.Module, onnx_path: Path, x: np.ndarray, window: int, stride: int,
            batch: int, repeat: int, floor: bool) -> dict:  # fmt: skip
    """Run both implementations on one (C, H, W) input; returns the numbers for the table."""
    model = open_model(onnx_path, device="cpu")
    c = x.shape[0]
    target = int(model.run(x[None])[0].argmax())
    softmax_net = torch.nn.Sequential(net.eval(), torch.nn.Softmax(dim=1))
    occ = Occlusion(softmax_net)
    xt = torch.from_numpy(x[None])

    def captum(per_eval: int):
        with torch.no_grad():
            return occ.attribute(
                xt,
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                target=target,
                baselines=0.0,
                perturbations_per_eval=per_eval,
            )

    # The model alone on ready tensors, in the same calls occlude() makes: the unoccluded image,
    # then the windows in equal batches.
    h, w = x.shape[1:]
    windows = (math.ceil((h - window) / stride) + 1) * (math.ceil((w - window) / stride) + 1)
    step = math.ceil(windows / math.ceil(windows / batch))
    sizes = [1] + [min(step, windows - s) for s in range(0, windows, step)]
    ready = {n: np.repeat(x[None], n, axis=0) for n in set(sizes)}
    fns = {
        "cvtool": lambda: occlude(model.run, x, 0.0, window, stride, batch_size=batch),
        "captum_b": lambda: captum(batch),
    }
    if floor:
        fns["floor"] = lambda: [model.run(ready[n]) for n in sizes]
    t, out = interleaved(fns, repeat)
    # Captum's default (one occluded copy per forward call) is many times slower: timed once.
    t0 = time.perf_counter()
    attr = captum(1)
    t_c1 = time.perf_counter() - t0

    res = out["cvtool"]
    ours = res.p0[target] - res.pixel_map(target)  # the drop in p(target), as Captum reports it
    theirs = attr[0, 0].numpy().astype(np.float64)
    corr = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    corr_b = float(np.corrcoef(ours.ravel(), out["captum_b"][0, 0].numpy().ravel())[0, 1])
    assert windows == len(res.ys) * len(res.xs)
    row = {
        "case": name,
        "input": f"{c}×{h}×{w}",
        "window/stride": f"{window}/{stride}",
        "windows": windows,
        "pearson": min(corr, corr_b),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "map_range": float(ours.max() - ours.min()),
        "cvtool_s": t["cvtool"],
        "captum_1_s": t_c1,
        "captum_b_s": t["captum_b"],
    }
    if floor:
        row["model_images_per_s"] = (windows + 1) / t["floor"]
        row["floor_s"] = t["floor"]
    return row


def resnet_case(batch: int, repeat: int) -> dict:
    from resnet_file import random_resnet18, smooth_picture

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.onnx"
        net, _ = random_resnet18(path)
        x = smooth_picture()
        return compare("ResNet-18 (random weights)", net, path, x, 28, 14, batch, repeat, floor=True)


def demo_case(ckpt: Path, onnx_path: Path, image: Path | None, batch: int, repeat: int) -> dict | None:
    from cvtool.images import load_and_preprocess
    from cvtool.train.checkpoint import load_checkpoint, model_from_checkpoint

    if not ckpt.is_file() or not onnx_path.is_file():
        print(f"skipping the demo case: {ckpt} or {onnx_path} is missing (run `make demo`)", file=sys.stderr)
        return None
    net, card = model_from_checkpoint(load_checkpoint(ckpt))
    test = ROOT / "data" / "fashion-mnist" / "test"
    if image is None and test.is_dir():
        # The least confident of the first 100 test images: a confident one barely changes under
        # occlusion, and agreement on a flat map would say little.
        model = open_model(onnx_path, device="cpu")
        candidates = [test / f"{i}.png" for i in range(1, 101) if (test / f"{i}.png").is_file()]
        top = model.run(np.stack([load_and_preprocess(p, card) for p in candidates])).max(axis=1)
        image = candidates[int(np.argmin(top))]
    if image is not None:
        print(f"demo image: {image}", file=sys.stderr)
        x = load_and_preprocess(image, card)
    else:  # no data here: a seeded random image through the card's normalisation
        rng = np.random.default_rng(0)
        x = ((rng.random((card.channels, *card.input_size)) - np.array(card.mean)[:, None, None])
             / np.array(card.std)[:, None, None]).astype(np.float32)  # fmt: skip
    return compare("demo simple_cnn (Fashion-MNIST)", net, onnx_path, x, 7, 1, batch, repeat, floor=False)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    lines = [
        f"### Occlusion vs Captum — {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), captum {__import__('captum').__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}.",
        f"Command: `python bench/occlusion_vs_captum.py {args.case} --batch {args.batch} "
        f"--repeat {args.repeat}`" + (f" ({args.note})" if args.note else ""),
        "",
        "| case | input | window/stride | windows | Pearson r | cvtool s | Captum s (1/call) | ×  "
        "| Captum s (batched) | × | model-only floor s | cvtool ÷ floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        floor = f"{r['floor_s']:.2f}" if "floor_s" in r else "—"
        ratio = f"{r['cvtool_s'] / r['floor_s']:.2f}" if "floor_s" in r else "—"
        lines.append(
            f"| {r['case']} | {r['input']} | {r['window/stride']} | {r['windows']} | {r['pearson']:.6f} "
            f"| {r['cvtool_s']:.3f} | {r['captum_1_s']:.3f} | {r['captum_1_s'] / r['cvtool_s']:.1f} "
            f"| {r['captum_b_s']:.3f} | {r['captum_b_s'] / r['cvtool_s']:.1f} | {floor} | {ratio} |"
        )
    lines.append("")
    lines.append(
        "Map agreement detail: "
        + "; ".join(
            f"{r['case']}: max |Δ| {r['max_abs_diff']:.2e} over a map range of {r['map_range']:.3g}"
            for r in rows
        )
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["resnet", "demo", "all"])
    ap.add_argument("--ckpt", type=Path, default=ROOT / "runs" / "demo" / "best.pt")
    ap.add_argument("--onnx", type=Path, default=ROOT / "runs" / "demo" / "model.onnx")
    ap.add_argument(
        "--image", type=Path, default=None, help="Demo image [default: least confident of 1-100.png]."
    )
    ap.add_argument(
        "--batch", type=int, default=64, help="cvtool's batch (its default) and Captum's batched run."
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="Append the table to bench/RESULTS.md.")
    ap.add_argument("--note", default="", help="A remark recorded with the command (e.g. machine load).")
    args = ap.parse_args()
    rows = []
    if args.case in ("resnet", "all"):
        rows.append(resnet_case(args.batch, args.repeat))
    if args.case in ("demo", "all"):
        row = demo_case(args.ckpt, args.onnx, args.image, args.batch, args.repeat)
        if row:
            rows.append(row)
    text = table(rows, args)
    print(text)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
