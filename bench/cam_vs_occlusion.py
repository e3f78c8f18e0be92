"""Class activation maps (ReciproCAM, `cvtool cam`) against cvtool's own occlusion, on ONNX Runtime.

    python bench/cam_vs_occlusion.py resnet       # ResNet-18 at 224², random weights
    python bench/cam_vs_occlusion.py demo         # the demo model (runs/demo/model.onnx), Fashion-MNIST
    python bench/cam_vs_occlusion.py all --record --note "load ..."   # appends to bench/RESULTS.md

Per case, on one image: the time of one forward pass (batch 1), of a CAM (`CamModel.cam`: one
backbone pass + the head on every cell) and of an occlusion map with cvtool's defaults (window
1/8 of the input side, or 7 px; stride half the window; `occlude`, batch 64), best of `--repeat`
after a warm-up, timed in interleaved rounds so that load from elsewhere hits all alike.

The demo case also times `evaluate()` on the Fashion-MNIST test set with no maps, `cam=5` and
`occlusion=5` (10 images each, figures included) — what decides whether CAMs are evaluate's
default — and scores deletion / insertion AUC (`--faithfulness-images` test images, predicted
class, 20 steps, mean baseline) of CAM, occlusion and the seeded random map.
Needs the train extra (torch, torchvision) for the ResNet export; benchmarks only.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvtool.evaluation.cam import open_cam
from cvtool.evaluation.faithfulness import faithfulness, mean_scores
from cvtool.evaluation.occlusion import load_input, num_positions, occlude, resolve_window
from cvtool.infer.session import open_model

ROOT = Path(__file__).resolve().parent.parent


def interleaved(fns: dict, repeat: int) -> dict:
    """Best wall time of each function over `repeat` rounds, after a warm-up round."""
    best = dict.fromkeys(fns, float("inf"))
    for rnd in range(repeat + 1):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rnd:
                best[key] = min(best[key], time.perf_counter() - t0)
    return best


def time_case(name: str, onnx_path: Path, x: np.ndarray, repeat: int) -> dict:
    model = open_model(onnx_path, device="cpu")
    t0 = time.perf_counter()
    split = open_cam(model)
    t_open = time.perf_counter() - t0
    window, stride = resolve_window(model.card.input_size)
    t = interleaved(
        {
            "forward": lambda: model.run(x[None]),
            "cam": lambda: split.cam(x),
            "occlusion": lambda: occlude(model.run, x, 0.0, window, stride, batch_size=64),
        },
        repeat,
    )
    return {
        "case": name,
        "input": "×".join(map(str, x.shape)),
        "split": split.describe(),
        "open_s": t_open,
        "windows": num_positions(model.card.input_size, window, stride),
        "window/stride": f"{window}/{stride}",
        **{f"{k}_s": v for k, v in t.items()},
    }


def resnet_case(repeat: int) -> dict:
    from resnet_file import random_resnet18, smooth_picture

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.onnx"
        random_resnet18(path)
        return time_case("ResNet-18 (random weights)", path, smooth_picture(), repeat)


def demo_case(onnx_path: Path, repeat: int, n_faith: int) -> dict | None:
    from cvtool.evaluation.run import evaluate

    test = ROOT / "data" / "fashion-mnist" / "test"
    labels = ROOT / "data" / "fashion-mnist" / "test_labels.csv"
    if not onnx_path.is_file() or not test.is_dir():
        print(f"skipping the demo case: {onnx_path} or {test} is missing (run `make demo`)", file=sys.stderr)
        return None
    model = open_model(onnx_path, device="cpu")
    _, x = load_input(test / "1.png", model.card)
    row = time_case("demo (Fashion-MNIST)", onnx_path, x, repeat)

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"none": {"cam": 0}, "cam5": {"cam": 5}, "occlusion5": {"cam": 0, "occlusion": 5}}
        for _ in range(repeat):
            for key, kw in runs.items():
                t0 = time.perf_counter()
                evaluate(model, test, Path(tmp) / key, labels, **kw)
                dt = time.perf_counter() - t0
                times[key] = min(times.get(key, float("inf")), dt)
    row.update({f"evaluate_{k}_s": v for k, v in times.items()})

    # Faithfulness of CAM and occlusion on the first test images, for the predicted class.
    split = open_cam(model)
    window, stride = resolve_window(model.card.input_size)
    scores: dict[str, list] = {"cam": [], "occlusion": []}
    for i in range(1, n_faith + 1):
        _, x = load_input(test / f"{i}.png", model.card)
        r = split.cam(x)
        k = int(r.p0.argmax())
        scores["cam"].append(faithfulness(model.run, x, r.pixel_map(k), 0.0, k))
        occ = occlude(model.run, x, 0.0, window, stride)
        scores["occlusion"].append(faithfulness(model.run, x, occ.p0[k] - occ.pixel_map(k), 0.0, k))
    row["faithfulness"] = {k: mean_scores(v) for k, v in scores.items()}
    row["faithfulness_images"] = n_faith
    return row


def table(rows: list[dict], args: argparse.Namespace) -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"## CAM (ReciproCAM) vs occlusion (bench/cam_vs_occlusion.py) — {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), onnxruntime "
        f"{__import__('onnxruntime').__version__}, CPU provider. Shared machine, loaded by other "
        f"work while this ran: `uptime` at the end said `{load}`.",
        f"Command: `python bench/cam_vs_occlusion.py {args.case} --repeat {args.repeat}`"
        + (f" ({args.note})" if args.note else ""),
        "",
        "| case | input | split (cells) | forward pass s | CAM s | CAM ÷ forward | occlusion window/stride "
        "| windows | occlusion s | occlusion ÷ CAM |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['input']} | {r['split']} | {r['forward_s']:.4f} | {r['cam_s']:.4f} "
            f"| {r['cam_s'] / r['forward_s']:.1f} | {r['window/stride']} | {r['windows']} "
            f"| {r['occlusion_s']:.3f} | **{r['occlusion_s'] / r['cam_s']:.0f}×** |"
        )
    lines.append("")
    lines.append(
        "Opening the split (graph analysis + two sessions, once per command): "
        + "; ".join(f"{r['case']} {r['open_s']:.2f} s" for r in rows)
        + "."
    )
    for r in rows:
        if "evaluate_none_s" in r:
            lines += [
                "",
                f"`evaluate()` on the 10,000 Fashion-MNIST test images, best of {args.repeat} "
                "(figures and report included):",
                "",
                "| maps | s | added |",
                "|---|---:|---:|",
                f"| none | {r['evaluate_none_s']:.2f} | — |",
                f"| cam=5 (10 images) | {r['evaluate_cam5_s']:.2f} "
                f"| {r['evaluate_cam5_s'] - r['evaluate_none_s']:+.2f} |",
                f"| occlusion=5 (10 images) | {r['evaluate_occlusion5_s']:.2f} "
                f"| {r['evaluate_occlusion5_s'] - r['evaluate_none_s']:+.2f} |",
            ]
        if "faithfulness" in r:
            f = r["faithfulness"]
            lines += [
                "",
                f"Faithfulness on test images 1–{r['faithfulness_images']} (predicted class, 20 steps, "
                "mean baseline; random = the seeded random map on the same images):",
                "",
                "| map | deletion AUC ↓ | random | insertion AUC ↑ | random |",
                "|---|---:|---:|---:|---:|",
            ]
            for k, v in f.items():
                lines.append(
                    f"| {k} | {v['deletion_auc']:.3f} | {v['random_deletion_auc']:.3f} "
                    f"| {v['insertion_auc']:.3f} | {v['random_insertion_auc']:.3f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["resnet", "demo", "all"])
    ap.add_argument("--onnx", type=Path, default=ROOT / "runs" / "demo" / "model.onnx")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--faithfulness-images", type=int, default=50)
    ap.add_argument("--record", action="store_true", help="Append the table to bench/RESULTS.md.")
    ap.add_argument("--note", default="", help="A remark recorded with the command (e.g. machine load).")
    args = ap.parse_args()
    rows = []
    if args.case in ("resnet", "all"):
        rows.append(resnet_case(args.repeat))
    if args.case in ("demo", "all"):
        row = demo_case(args.onnx, args.repeat, args.faithfulness_images)
        if row:
            rows.append(row)
    text = table(rows, args)
    print(text)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
