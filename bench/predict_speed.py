"""Prediction speed: how close `cvtool predict` comes to the limit its two stages set.

    python bench/predict_speed.py resnet [--work DIR] [--int8 MODEL.onnx]   # benchmarks 1, 2 and 4
    python bench/predict_speed.py fmnist [--data DIR] [--model MODEL.onnx]  # benchmark 3
    python bench/predict_speed.py tune   [--work DIR]                       # session options

Decoding and the model share the cores, so with the model alone on ready tensors at M images/s
and decoding + preprocessing alone (cvtool's own functions and threads) at D images/s, the
end-to-end limit is 1 / (1/M + 1/D). Each end-to-end run prints where its time went (the same
line as `cvtool predict --verbose`).

1. ResNet-18 at 224² on 1,000 generated JPEGs (~500×375, seeded), batch 32, fp32 and INT8:
   end-to-end images/s (listing, decoding, preprocessing, the model, the CSV) ÷ the limit.
   Target ≥ 0.90 fp32, 1.0 INT8.
2. The same folder and model in a plain PyTorch eager loop (torchvision decode and transforms,
   DataLoader with 2 workers), for context.
3. Fashion-MNIST's 10,000 test PNGs with the demo model: end-to-end ÷ the model alone.
   Target ≥ 0.5.
4. `--timm-inference PATH` (a copy of timm's inference.py, from github.com/huggingface/
   pytorch-image-models; needs `pip install timm pandas`): whole-process `cvtool predict` vs
   whole-process `python inference.py` on the same folder with the same weights (timm's resnet18
   loads torchvision's state dict as it is), both on the CPU, batch 32, 2 loader workers.

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
    """torchvision ResNet-18 (seeded random weights, 10 classes) exported with a cvtool card; its
    state dict goes beside it as resnet18.pth (the same weights for timm's inference.py)."""
    if path.exists() and path.with_suffix(".pth").exists():
        return path
    import torch
    from resnet_file import random_resnet18

    net, _ = random_resnet18(path, num_classes=10)
    torch.save(net.state_dict(), path.with_suffix(".pth"))
    return path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
                flags = [f for f in wanted if f in have]
                break
    except OSError:
        pass
    import onnxruntime as ort

    py = platform.python_version()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu} ({' '.join(flags) or 'no VNNI/BF16/AMX'}), {os.cpu_count()} logical CPUs, "
        f"Python {py}, onnxruntime {ort.__version__}, load average before the run {load}"
    )


def cpu_jiffies() -> tuple[int, int]:
    """(all CPU time, time stolen by the hypervisor) so far, in jiffies, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields), fields[7] if len(fields) > 7 else 0


def steal_since(start: tuple[int, int]) -> str:
    """The share of CPU time the hypervisor took since `start` (other virtual machines' load)."""
    total, steal = (a - b for a, b in zip(cpu_jiffies(), start, strict=True))
    return f"{100 * steal / total:.0f} % of the CPU time stolen by the hypervisor meanwhile" if total else ""


def best_of(fn, repeat: int):
    """The best (highest images/s) of `repeat` runs of fn(), after one warm-up run.

    fn() returns images/s, or (images/s, anything to keep with it)."""
    fn()
    runs = [fn() for _ in range(repeat)]
    return max(runs, key=lambda r: r[0] if isinstance(r, tuple) else r)


def limit(model: float, decode: float) -> float:
    """End-to-end images/s when the model and decoding share the cores: 1 / (1/M + 1/D)."""
    return 1.0 / (1.0 / model + 1.0 / decode)


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
):
    """(images/s, stage line) of what `cvtool predict` does after start-up: open, list, decode,
    run, write the CSV."""
    from cvtool.infer.ensemble import Ensemble
    from cvtool.infer.predict import predict_to_file
    from cvtool.infer.session import open_model
    from cvtool.infer.sources import list_items

    out = Path(tempfile.mkdtemp()) / "sub.csv"
    t0 = time.perf_counter()
    ens = Ensemble([open_model(model_path, device="cpu", threads=threads, spinning=spinning)])
    t_list = time.perf_counter()
    items = list_items(folder)
    listing = time.perf_counter() - t_list
    result = predict_to_file(ens, items, out, batch_size=batch, workers=workers)
    dt = time.perf_counter() - t0
    shutil.rmtree(out.parent)
    result.times.listing = listing
    result.times.total += listing
    return result.images / dt, result.times.describe()


def decode_only(folder: Path, card, workers: int | None) -> float:
    """images/s of listing + decoding + preprocessing alone, with the pipeline's threads."""
    from cvtool.decode import decode_only as run

    t0 = time.perf_counter()
    n = run(sorted(folder.iterdir()), [card], workers=workers)
    return n / (time.perf_counter() - t0)


def decode_processes(folder: Path, card, processes: int) -> float:
    """images/s of decoding + preprocessing in `processes` processes (no GIL shared): what the
    cores can decode, the D of the limit for files whose decoding holds the GIL (small PNGs)."""
    import multiprocessing as mp

    files = sorted(folder.iterdir())
    parts = [files[i::processes] for i in range(processes)]
    with mp.get_context("fork").Pool(processes) as pool:
        t0 = time.perf_counter()
        n = sum(pool.starmap(_decode_part, [(part, card) for part in parts]))
        return n / (time.perf_counter() - t0)


def _decode_part(files, card) -> int:
    from cvtool.decode import decode_only as run

    return run(files, [card], workers=1)


def whole_process(cmd: list[str], n: int) -> float:
    """images/s of a whole command (start-up, imports and all)."""
    import subprocess

    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    start = cpu_jiffies()
    work = Path(args.work)
    folder = make_jpegs(work / "jpegs")
    model = make_resnet18(work / "resnet18.onnx")
    n = len(list(folder.glob("*.jpg")))
    card = card_of(model)
    dec = best_of(lambda: decode_only(folder, card, args.workers), args.repeat)
    rows, stages = [], []
    cvtool = [sys.executable, "-m", "cvtool", "predict", str(folder), "-o", str(work / "whole.csv")]
    for label, path in [("fp32", model)] + ([("int8", Path(args.int8))] if args.int8 else []):
        mo = best_of(lambda p=path: model_only(p, args.batch, 320, args.threads, None), args.repeat)
        e2e, line = best_of(
            lambda p=path: end_to_end(p, folder, args.batch, args.workers, args.threads), args.repeat
        )
        whole = best_of(lambda p=path: whole_process([*cvtool, "-m", str(p)], n), args.repeat)
        rows.append((label, mo, e2e, whole))
        stages.append(f"- {label}: {line}")
    eager = best_of(lambda: torch_eager(model, folder, args.batch), args.repeat)
    timm = None
    if args.timm_inference:
        timm_cmd = [
            sys.executable, args.timm_inference, str(folder), "--model", "resnet18",
            "--checkpoint", str(model.with_suffix(".pth")), "--num-classes", "10", "--device", "cpu",
            "-b", str(args.batch), "-j", "2", "--results-dir", str(work / "timm"), "--no-console-results",
        ]  # fmt: skip
        timm = best_of(lambda: whole_process(timm_cmd, n), args.repeat)
    print(f"\n### predict speed, ResNet-18 224², {n} JPEGs ~500×375, batch {args.batch}")
    print(f"\n- machine: {machine()}")
    print(f"- command: `python bench/predict_speed.py resnet {' '.join(sys.argv[2:])}`; {steal_since(start)}")
    print(f"- decode + preprocess alone (cvtool's threads): {dec:.0f} images/s\n")
    print(
        "| model | model alone img/s | limit img/s | end-to-end img/s | ÷ limit | whole process img/s "
        "| PyTorch eager img/s |" + (" timm inference.py img/s | cvtool ÷ timm |" if timm else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|---|" if timm else ""))
    for label, mo, e2e, whole in rows:
        lim = limit(mo, dec)
        extra = f" {timm:.1f} | {whole / timm:.2f}× |" if timm else ""
        cells = f"{mo:.1f} | {lim:.1f} | {e2e:.1f} | {e2e / lim:.2f} | {whole:.1f} | {eager:.1f}"
        print(f"| {label} | {cells} |{extra}")
    print("\nWhere the time went (best run):\n")
    print("\n".join(stages))


def card_of(path: Path):
    from cvtool.infer.session import open_model

    return open_model(path, device="cpu").card


def cmd_fmnist(args) -> None:
    start = cpu_jiffies()
    folder = Path(args.data) / "test"
    model = Path(args.model)
    card = card_of(model)
    dec = best_of(lambda: decode_only(folder, card, args.workers), args.repeat)
    procs = best_of(lambda: decode_processes(folder, card, os.cpu_count() or 1), args.repeat)
    e2e, line = best_of(
        lambda: end_to_end(model, folder, args.batch, args.workers, args.threads), args.repeat
    )
    mo = best_of(lambda: model_only(model, args.batch, 10000, args.threads, None), args.repeat)
    n = sum(1 for _ in folder.iterdir())
    print(f"\n### predict speed, Fashion-MNIST test ({n} PNGs 28×28), {model.name}, batch {args.batch}")
    print(f"\n- machine: {machine()}")
    print(f"- command: `python bench/predict_speed.py fmnist {' '.join(sys.argv[2:])}`; {steal_since(start)}")
    print(f"- where the time went (best run): {line}\n")
    print(
        "| model alone img/s | decode alone, cvtool's threads | decode alone, one process per core "
        "| limit (processes) | end-to-end img/s | ÷ model alone (≥ 0.5) | ÷ limit |"
    )
    print("|---|---|---|---|---|---|---|")
    lim = limit(mo, procs)
    ratios = f"{e2e / mo:.2f} | {e2e / lim:.2f}"
    print(f"| {mo:.0f} | {dec:.0f} | {procs:.0f} | {lim:.0f} | {e2e:.0f} | {ratios} |")


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
            v, _ = best_of(lambda b=batch, w=workers: end_to_end(model, folder, b, w, None), 1)
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
        s.add_argument("--timm-inference", default=None, help="a copy of timm's inference.py")
        s.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
        s.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model.onnx"))
    args = p.parse_args()
    {"resnet": cmd_resnet, "fmnist": cmd_fmnist, "tune": cmd_tune}[args.cmd](args)


if __name__ == "__main__":
    main()
