"""Fashion-MNIST training recipes: test accuracy reached and training time, measured end to end.

    python bench/train_fashion_mnist.py                                   # --recipe fashion-mnist
    python bench/train_fashion_mnist.py --recipe fashion-mnist-long --record
    python bench/train_fashion_mnist.py --out runs/fm -- --epochs 10      # extra `cvtool train` flags

Targets on a 2-core CPU: `fashion-mnist` ≥ 94 % test accuracy within 15 minutes of training;
`fashion-mnist-long` (the stretch goal) 95 % within 30 minutes.

Runs the three commands a user would, as subprocesses of this Python:

    cvtool train DATA/train --recipe R --out OUT [extra flags]     (timed: "training minutes")
    cvtool export OUT/best.pt -o OUT/model.onnx
    cvtool evaluate DATA/test --labels DATA/test_labels.csv --model OUT/model.onnx -o OUT/eval

The accuracy is cvtool evaluate's, on the 10,000 test images the model never saw (validation
picks best.pt from a 10 % split of the training set). The load average before and after is
recorded: on a shared machine the minutes are an upper bound. `--record` appends the result to
bench/RESULTS.md. Prepare the data first: `cvtool data fashion-mnist data/fashion-mnist`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"fashion-mnist": (0.94, 15.0), "fashion-mnist-long": (0.95, 30.0)}


def cvtool(*args: str) -> list[str]:
    return [sys.executable, "-m", "cvtool", *args]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(cmd: list[str], log: Path) -> float:
    """Run `cmd` with its output appended to `log`; returns wall seconds; exits on failure."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        sys.exit(f"command failed with exit code {rc}; see {log}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fashion-mnist", choices=sorted(TARGETS))
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "fashion-mnist")
    ap.add_argument("--out", type=Path, default=None, help="run folder [default: runs/bench-RECIPE]")
    ap.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    ap.add_argument("extra", nargs="*", help="extra `cvtool train` flags, after --")
    args = ap.parse_args()
    out = args.out or ROOT / "runs" / f"bench-{args.recipe}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    train_cmd = cvtool(
        "train", str(args.data / "train"), "--recipe", args.recipe, "--out", str(out), *args.extra
    )

    load_before = os.getloadavg()
    train_s = run(train_cmd, log)
    load_after = os.getloadavg()
    run(cvtool("export", str(out / "best.pt"), "-o", str(out / "model.onnx")), log)
    evaluate = cvtool("evaluate", str(args.data / "test"), "--labels", str(args.data / "test_labels.csv"),
                      "--model", str(out / "model.onnx"), "-o", str(out / "eval"))  # fmt: skip
    run(evaluate, log)
    accuracy = json.loads((out / "eval" / "metrics.json").read_text())["accuracy"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    best = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"])))  # as best.pt picks

    target_acc, target_min = TARGETS[args.recipe]
    minutes = train_s / 60
    verdict = "met" if accuracy >= target_acc and minutes <= target_min else "not met"
    lines = [
        f"## Training recipe `{args.recipe}` (bench/train_fashion_mnist.py) — {datetime.date.today()}",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
        f"torch {__import__('torch').__version__}. Load average (1 min) {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after training.",
        "",
        f"Command: `{shlex.join(['cvtool', *train_cmd[3:]])}`, then export and evaluate on the test split.",
        "",
        "| epochs | training minutes | s/epoch (median) | train img/s (median) | best val acc (epoch) "
        "| **test accuracy** | target |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {len(rows)} | {minutes:.1f} | {sorted(float(r['seconds']) for r in rows)[len(rows) // 2]:.0f} "
        f"| {sorted(float(r['images_per_s']) for r in rows)[len(rows) // 2]:.0f} "
        f"| {float(best['val_acc']):.2%} ({best['epoch']}) | **{accuracy:.2%}** "
        f"| ≥ {target_acc:.0%} in {target_min:.0f} min: {verdict} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
