"""JPEG draft decoding: how much it changes the model's input, and how much faster it decodes.

    python bench/jpeg_draft.py [--work DIR] [--n 300] [--repeat 3] [--seed 0]

`load_image` decodes a large JPEG at 1/2, 1/4 or 1/8 scale through the DCT (Pillow's draft()),
the smallest scale still at least twice the size the resize needs. torchvision decodes at full
size and resizes from there. This script measures the difference on real photos, for a 224×224
`shorter_crop` card (crop_pct 0.875, bilinear, ImageNet mean/std), draft on vs off
(`jpeg_draft=False` is exactly the full decode, bit for bit torchvision's pipeline).

The only real photos on the machine are three small ones (matplotlib's grace_hopper.jpg 512×600,
scikit-learn's china.jpg and flower.jpg 640×427), too small for draft to act at 224. So the set
is built from them, seeded, in two kinds:
- `upscaled`: a random crop (random aspect ratio, random position) resized with Lanczos to a
  common photo size (640×480 … 4032×3024). Real content, but smoother than a native photo of
  that size, so it may understate draft's effect.
- `mosaic`: a grid of native-resolution random crops pasted side by side up to the same sizes:
  real pixel-level texture at its own scale (plus the seams between tiles).
Each image is re-encoded at quality 90 (4:2:0 chroma, Pillow's default), portrait or landscape.
The files go under --work (default: a temporary folder), never into the repository.

Reported, after normalisation (so in the units the model sees): max and mean |Δ| per image
(mean over the images), the largest |Δ| anywhere, how often draft changed the input at all, and
decode and decode + preprocess time per image with and without draft (best of --repeat passes).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cvtool.contract import ModelCard
from cvtool.images import load_and_preprocess, load_image

SITE = Path(np.__file__).resolve().parents[1]
SOURCES = [
    SITE / "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    SITE / "sklearn/datasets/images/china.jpg",
    SITE / "sklearn/datasets/images/flower.jpg",
]
# (width, height) of common photo sizes; each is also used in portrait orientation.
PHOTO_SIZES = [(640, 480), (1024, 768), (1280, 720), (1600, 1200), (2048, 1536), (3000, 2000), (4032, 3024)]

CARD = ModelCard(class_names=("x",), input_size=(224, 224), resize="shorter_crop", crop_pct=0.875)
FULL = dataclasses.replace(CARD, jpeg_draft=False)


def _random_crop(rng: np.random.Generator, src: Image.Image, aspect: float, min_frac: float) -> Image.Image:
    """A crop of `src` with width / height = aspect, covering at least min_frac of the shorter fit."""
    sw, sh = src.size
    fit_w = min(sw, int(sh * aspect))
    frac = rng.uniform(min_frac, 1.0)
    w = max(8, int(fit_w * frac))
    h = max(8, min(sh, int(w / aspect)))
    x = int(rng.integers(0, sw - w + 1))
    y = int(rng.integers(0, sh - h + 1))
    return src.crop((x, y, x + w, y + h))


def _upscaled(rng: np.random.Generator, sources: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    src = sources[int(rng.integers(len(sources)))]
    return _random_crop(rng, src, size[0] / size[1], 0.4).resize(size, Image.Resampling.LANCZOS)


def _mosaic(rng: np.random.Generator, sources: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    out = Image.new("RGB", size)
    y = 0
    while y < size[1]:
        th = int(rng.integers(150, 400))
        x = 0
        while x < size[0]:
            tw = int(rng.integers(150, 400))
            src = sources[int(rng.integers(len(sources)))]
            out.paste(
                _random_crop(rng, src, tw / th, 0.3).resize((tw, th), Image.Resampling.BILINEAR), (x, y)
            )
            x += tw
        y += th
    return out


def build_set(folder: Path, n: int, seed: int) -> list[tuple[Path, str]]:
    """n JPEGs (quality 90) under folder: (path, kind) pairs, the same for the same seed."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for p in SOURCES:
        with Image.open(p) as img:
            sources.append(img.convert("RGB"))
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        if rng.random() < 0.35:
            w, h = h, w
        kind = "upscaled" if i % 2 == 0 else "mosaic"
        path = folder / f"{i:04d}_{kind}_{w}x{h}.jpg"
        if not path.exists():
            img = (_upscaled if kind == "upscaled" else _mosaic)(rng, sources, (w, h))
            img.save(path, quality=90)
        else:
            # Keep the generator's sequence the same whether or not the files already exist.
            (_upscaled if kind == "upscaled" else _mosaic)(rng, sources, (w, h))
        files.append((path, kind))
    return files


def measure(files: list[tuple[Path, str]], repeat: int) -> dict:
    rows = []
    for path, kind in files:
        on, off = load_and_preprocess(path, CARD), load_and_preprocess(path, FULL)
        d = np.abs(on - off)
        with Image.open(path) as img:
            full_size = img.size
        rows.append(
            {
                "kind": kind,
                "size": full_size,
                "decoded": load_image(path, CARD).size,
                "max": float(d.max()),
                "mean": float(d.mean()),
                "frac": float((d > 0).mean()),
                "changed": bool(d.max() > 0),
            }
        )

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            for path, _ in files:
                fn(path)
            times.append(time.perf_counter() - t)
        return min(times) / len(files) * 1e3

    speed = {
        "decode_on": best(lambda p: load_image(p, CARD)),
        "decode_off": best(lambda p: load_image(p, FULL)),
        "pre_on": best(lambda p: load_and_preprocess(p, CARD)),
        "pre_off": best(lambda p: load_and_preprocess(p, FULL)),
    }
    return {"rows": rows, "speed": speed}


def _machine() -> tuple[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    try:
        load = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        load = "unknown"
    return cpu, load


def report(result: dict, n: int, seed: int, cpu: str, load_before: str, load_after: str) -> str:
    rows, speed = result["rows"], result["speed"]

    def summary(sel: list[dict]) -> str:
        changed = [r for r in sel if r["changed"]]
        if not sel:
            return "| – | – | – | – | – | – |"
        mx = max(r["max"] for r in sel)
        per_image_max = np.mean([r["max"] for r in changed]) if changed else 0.0
        mean = np.mean([r["mean"] for r in changed]) if changed else 0.0
        frac = np.mean([r["frac"] for r in changed]) if changed else 0.0
        return (
            f"| {len(changed)} / {len(sel)} ({100 * len(changed) / len(sel):.0f} %) | {mx:.3f} | "
            f"{per_image_max:.3f} | {mean:.4f} | {100 * frac:.0f} % |"
        )

    lines = [
        "| images | draft changed the input | max \\|Δ\\| | per-image max \\|Δ\\|, mean over changed images "
        "| mean \\|Δ\\|, over changed images | values changed, in changed images |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("upscaled", "mosaic"):
        lines.append(f"| {kind} | " + summary([r for r in rows if r["kind"] == kind])[2:])
    lines.append("| all | " + summary(rows)[2:])
    lines += [
        "",
        "| stored size (either orientation) | decoded at (draft) | changed | max \\|Δ\\| | mean \\|Δ\\| |",
    ]
    lines.append("|---|---|---:|---:|---:|")
    for w, h in PHOTO_SIZES:
        sel = [r for r in rows if sorted(r["size"]) == sorted((w, h))]
        if not sel:
            continue
        dec = sorted({"×".join(map(str, sorted(r["decoded"], reverse=True))) for r in sel})
        changed = sum(r["changed"] for r in sel)
        lines.append(
            f"| {w}×{h} | {', '.join(dec)} | {changed} / {len(sel)} | {max(r['max'] for r in sel):.3f} | "
            f"{np.mean([r['mean'] for r in sel]):.4f} |"
        )
    lines += [
        "",
        "| per image (ms, best of passes) | draft on (default) | draft off (`jpeg_draft` false) | speed-up |",
        "|---|---:|---:|---:|",
        f"| decode (load_image) | {speed['decode_on']:.1f} | {speed['decode_off']:.1f} | "
        f"{speed['decode_off'] / speed['decode_on']:.1f}× |",
        f"| decode + preprocess | {speed['pre_on']:.1f} | {speed['pre_off']:.1f} | "
        f"{speed['pre_off'] / speed['pre_on']:.1f}× |",
    ]
    header = [
        f"Command: `python bench/jpeg_draft.py --n {n} --seed {seed}`. CPU: {cpu}.",
        f"Load: before `{load_before}`; after `{load_after}`.",
        "",
    ]
    return "\n".join(header + lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for the generated JPEGs")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cpu, load_before = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work if args.work is not None else Path(tmp)
        files = build_set(folder / f"jpeg_draft_seed{args.seed}", args.n, args.seed)
        result = measure(files, args.repeat)
    _, load_after = _machine()
    print(report(result, args.n, args.seed, cpu, load_before, load_after))


if __name__ == "__main__":
    main()
