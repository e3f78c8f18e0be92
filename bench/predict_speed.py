"""Prediction speed: how close `cvtool predict` comes to the model's own speed.

    python bench/predict_speed.py resnet [--work DIR] [--int8 MODEL.onnx]   # benchmarks 1 and 2
    python bench/predict_speed.py fmnist [--data DIR] [--model MODEL.onnx]  # benchmark 3
    python bench/predict_speed.py tune   [--work DIR]                       # session options

1. ResNet-18 at 224² on 1,000 generated JPEGs (~500×375, seeded), batch 32: end-to-end images/s
   (listing, decoding, preprocessing, the model, the CSV) ÷ the model alone on ready tensors.
   Target ≥ 0.90.
2. The same folder and model in a plain PyTorch eager loop (torchvision decode and transforms,
   DataLoader with 2 workers). Target: cvtool ≥ 1.8× its images/s on a 2-core CPU (≥ 3.5× INT8).
3. Fashion-MNIST's 10,000 test PNGs with the demo model: end-to-end ÷ decode-only images/s with
   the same threads (decoding is the floor there). Target ≥ 0.7.

Every figure is the best of `--repeat` runs after a warm-up run (warm file cache). Results are
printed as a Markdown block to append to bench/RESULTS.md. torch and torchvision are used here
only to build the ResNet-18 file and for the eager baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]


# --- inputs --------------------------------------------------------------------------------------


def make_jpegs(folder: Path, n: int = 1000, seed: int = 0) -> Path:
    """n photo-like JPEGs around 500×375 (sizes vary a little), named 1.jpg … n.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        w, h = int(rng.integers(470, 530)), int(rng.integers(350, 400))
        if rng.random() < 0.2:  # some portrait images
            w, h = h, w
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80)) for c in range(3)], -1
        )
        a = (127 + 90 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(a, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50))
            x1, y1 = x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        img.filter(ImageFilter.GaussianBlur(1)).save(folder / f"{i}.jpg", quality=90)
    return folder


def make_resnet18(path: Path) -> Path:
    """torchvision ResNet-18 (seeded random weights, 10 classes) exported with a cvtool card."""
    if path.exists():
        return path
    from resnet_file import random_resnet18

    random_resnet18(path, num_classes=10)
    return path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    py = platform.python_version()
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {py}, onnxruntime {ort.__version__}"


def best_of(fn, repeat: int) -> float:
    """Best (highest) images/s of `repeat` runs of fn() → images/s, after one warm-up run."""
    fn()
    return max(fn() for _ in range(repeat))


# --- measurements --------------------------------------------------------------------------------


def model_only(model_path: Path, batch: int, n: int, threads: int | None, spinning: bool | None) -> float:
    """images/s of ONNX Runtime alone on ready (N, C, H, W) tensors, as cvtool configures it."""
    from cvtool.infer.session import open_model

    m = open_model(model_path, device="cpu", threads=threads, spinning=spinning)
    c, (h, w) = m.card.channels, m.card.input_size
    x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)
    m.run(x)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        m.run(x)
        done += batch
    return done / (time.perf_counter() - t0)


def end_to_end(
    model_path: Path,
    folder: Path,
    batch: int,
    workers: int | None,
    threads: int | None,
    spinning: bool | None = None,
) -> float:
    """images/s of what `cvtool predict` does after start-up: open, list, decode, run, write the CSV."""
    from cvtool.infer.ensemble import Ensemble
    from cvtool.infer.predict import predict_to_file
    from cvtool.infer.session import open_model
    from cvtool.infer.sources import list_items

    out = Path(tempfile.mkdtemp()) / "sub.csv"
    t0 = time.perf_counter()
    ens = Ensemble([open_model(model_path, device="cpu", threads=threads, spinning=spinning)])
    items = list_items(folder)
    result = predict_to_file(ens, items, out, batch_size=batch, workers=workers)
    dt = time.perf_counter() - t0
    shutil.rmtree(out.parent)
    return result.images / dt


def decode_only(folder: Path, card, workers: int) -> float:
    """images/s of listing + decoding + preprocessing alone, with the pipeline's threads."""
    from cvtool.decode import decode_only as run

    t0 = time.perf_counter()
    n = run(sorted(folder.iterdir()), [card], workers=workers)
    return n / (time.perf_counter() - t0)


def torch_eager(model_path: Path, folder: Path, batch: int, workers: int = 2) -> float:
    """images/s of a plain PyTorch loop: torchvision decode + transforms, DataLoader, eager model."""
    import torch
    import torchvision
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    tf = v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    files = sorted(folder.glob("*.jpg"))

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return tf(decode_image(str(files[i]), mode=ImageReadMode.RGB))

    loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, num_workers=workers)
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x in loader:
            net(x).softmax(1)
            n += len(x)
    return n / (time.perf_counter() - t0)


# --- commands ------------------------------------------------------------------------------------


def cmd_resnet(args) -> None:
    work = Path(args.work)
    folder = make_jpegs(work / "jpegs")
    model = make_resnet18(work / "resnet18.onnx")
    rows = []
    for label, path in [("fp32", model)] + ([("int8", Path(args.int8))] if args.int8 else []):
        mo = best_of(lambda p=path: model_only(p, args.batch, 320, args.threads, None), args.repeat)
        e2e = best_of(
            lambda p=path: end_to_end(p, folder, args.batch, args.workers, args.threads), args.repeat
        )
        rows.append((label, mo, e2e))
    eager = best_of(lambda: torch_eager(model, folder, args.batch), args.repeat)
    n = len(list(folder.glob("*.jpg")))
    print(f"\n### predict speed, ResNet-18 224², {n} JPEGs ~500×375, batch {args.batch}")
    print(f"\n- machine: {machine()}")
    print(f"- command: `python bench/predict_speed.py resnet {' '.join(sys.argv[2:])}`\n")
    print(
        "| model | ORT model-only img/s | cvtool end-to-end img/s | ratio (≥ 0.90) "
        "| PyTorch eager img/s | cvtool ÷ eager |"
    )
    print("|---|---|---|---|---|---|")
    for label, mo, e2e in rows:
        print(f"| {label} | {mo:.1f} | {e2e:.1f} | {e2e / mo:.2f} | {eager:.1f} | {e2e / eager:.2f}× |")


def cmd_fmnist(args) -> None:
    from cvtool.infer.session import open_model

    folder = Path(args.data) / "test"
    model = Path(args.model)
    card = open_model(model, device="cpu").card
    workers = args.workers or 2
    dec = best_of(lambda: decode_only(folder, card, workers), args.repeat)
    e2e = best_of(lambda: end_to_end(model, folder, args.batch, workers, args.threads), args.repeat)
    # Shown for context: when the model alone is not much faster than decoding, the two share the
    # cores and the ratio falls with the model's share of the work.
    mo = best_of(lambda: model_only(model, args.batch, 10000, args.threads, None), args.repeat)
    n = sum(1 for _ in folder.iterdir())
    print(f"\n### predict speed, Fashion-MNIST test ({n} PNGs 28×28), {model.name}, batch {args.batch}")
    print(f"\n- machine: {machine()}")
    print(f"- command: `python bench/predict_speed.py fmnist {' '.join(sys.argv[2:])}`\n")
    print("| decode-only img/s | end-to-end img/s | ratio (≥ 0.7) | model-only img/s |")
    print("|---|---|---|---|")
    print(f"| {dec:.0f} | {e2e:.0f} | {e2e / dec:.2f} | {mo:.0f} |")


def cmd_tune(args) -> None:
    """Model-only and end-to-end images/s over ORT threads × spinning × decode workers."""
    work = Path(args.work)
    folder = make_jpegs(work / "jpegs")
    model = make_resnet18(work / "resnet18.onnx")
    print("| threads | spinning | model-only img/s |")
    print("|---|---|---|")
    for threads in (None, 1, 2):
        for spin in (False, True):
            v = best_of(lambda t=threads, s=spin: model_only(model, args.batch, 160, t, s), 1)
            print(f"| {threads or 'default'} | {spin} | {v:.1f} |")
    print("\n| batch | workers | end-to-end img/s |")
    print("|---|---|---|")
    for batch in (16, 32, 64):
        for workers in (1, 2):
            v = best_of(lambda b=batch, w=workers: end_to_end(model, folder, b, w, None), 1)
            print(f"| {batch} | {workers} | {v:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("resnet", "fmnist", "tune"):
        s = sub.add_parser(name)
        s.add_argument("--work", default="/tmp/cvtool-bench", help="where the JPEGs and model go")
        s.add_argument("--batch", type=int, default=32)
        s.add_argument("--workers", type=int, default=None, help="decoding threads (default: cvtool's)")
        s.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: cvtool's)")
        s.add_argument("--repeat", type=int, default=3)
        s.add_argument("--int8", default=None, help="an INT8 model of the same ResNet-18 (cvtool quantize)")
        s.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
        s.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model.onnx"))
    args = p.parse_args()
    {"resnet": cmd_resnet, "fmnist": cmd_fmnist, "tune": cmd_tune}[args.cmd](args)


if __name__ == "__main__":
    main()
