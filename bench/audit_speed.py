"""cvtool audit: what the thresholds rest on, and how fast and how lean it is on 70,000 images.

    python bench/audit_speed.py --fm /tmp/fm [--model m.onnx] [--sample 2000] [--seed 0]

--fm is a folder laid out by `cvtool data fashion-mnist` (train/<class>/, test/, test_labels.csv).

1. Robustness (the --distance and --max-diff defaults): pHash distance and 8×8 thumbnail mean
   |Δ| between an image and its JPEG re-encode (quality 85, 75), a resize (±1 pixel, −10 %) and a
   1-pixel shift, on --sample Fashion-MNIST images and on generated random-shape images of 32 to
   256 pixels (tests/test_audit.py's generator); and how many pairs of different images pass.
2. Pairs on all 70,000 Fashion-MNIST images: pHash within d bits alone, and confirmed by the
   thumbnails; test images with a twin in train.
3. Speed and memory: `cvtool audit train test` in a fresh process per setting (wall time, peak
   RSS from wait4), with 1 and 2 decoding threads and the default, and on 10,000 / 60,000 /
   70,000 images to show memory growing linearly.
4. With --model: feature extraction and the cosine search, and the share of test images with a
   "feature twin" at several thresholds.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_audit import random_shapes  # noqa: E402  (the tests' generator of unrelated images)

from cvtool.evaluation.features import penultimate_features  # noqa: E402
from cvtool.evaluation.imagehash import Components, cosine_pairs, fingerprint, near_pairs, phash, thumbnails  # noqa: E402
from cvtool.images import load_image  # noqa: E402


def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    buf.seek(0)
    return Image.open(buf).convert(img.mode)


def _shift(img: Image.Image) -> Image.Image:
    a = np.asarray(img).copy()
    a = np.roll(a, 1, axis=1)
    a[:, 0] = a[:, 1]
    return Image.fromarray(a)


EDITS = {
    "JPEG q85": lambda im: _jpeg(im, 85),
    "JPEG q75": lambda im: _jpeg(im, 75),
    "resize −1 px": lambda im: im.resize((im.width - 1, im.height - 1), Image.Resampling.BILINEAR),
    "resize +1 px": lambda im: im.resize((im.width + 1, im.height + 1), Image.Resampling.BILINEAR),
    "resize −10 %": lambda im: im.resize(
        (im.width * 9 // 10, im.height * 9 // 10), Image.Resampling.BILINEAR
    ),
    "shift 1 px": _shift,
}


def _prints(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    gray = np.stack([fingerprint(im).gray for im in images])
    return phash(gray), thumbnails(gray)


def robustness(sets: dict[str, list[Image.Image]], distance: int, max_diff: float) -> None:
    print("\n| images | edit | pHash bits: mean / max | ≤ d | thumbnail |Δ|: p99 / max | both pass |")
    print("|---|---|---:|---:|---:|---:|")
    for name, images in sets.items():
        h0, t0 = _prints(images)
        for edit, f in EDITS.items():
            h1, t1 = _prints([f(im) for im in images])
            bits = np.bitwise_count(h0 ^ h1)
            diff = np.abs(t0 - t1).mean(axis=1)
            ok = (bits <= distance) & (diff <= max_diff)
            print(
                f"| {name} | {edit} | {bits.mean():.1f} / {bits.max()} | {(bits <= distance).mean():.1%} "
                f"| {np.percentile(diff, 99):.2f} / {diff.max():.2f} | {ok.mean():.1%} |"
            )
        n = len(images)
        pairs = n * (n - 1) // 2
        near = sum(len(i) for i, _, _ in near_pairs(h0, distance))
        both = sum(
            int((np.abs(t0[i] - t0[j]).mean(axis=1) <= max_diff).sum())
            for i, j, _ in near_pairs(h0, distance)
        )
        print(f"| {name} | different images ({pairs:,} pairs) | | {near:,} pairs | | {both:,} pairs |")


def fm_pairs(fm: Path, distance: int, max_diff: float) -> None:
    files = sorted((fm / "train").rglob("*.png")) + sorted((fm / "test").glob("*.png"))
    is_test = np.array([p.parent.name == "test" for p in files])
    t = time.perf_counter()
    gray = np.stack([fingerprint(load_image(p)).gray for p in files])
    h, th = phash(gray), thumbnails(gray)
    print(f"\nFashion-MNIST, {len(files):,} images hashed in {time.perf_counter() - t:.1f} s (one thread)")
    for d in sorted({2, distance, 6}):
        t = time.perf_counter()
        alone = both = 0
        leak_alone: set[int] = set()
        leak_both: set[int] = set()
        for i, j, _ in near_pairs(h, d):
            ok = np.abs(th[i] - th[j]).mean(axis=1) <= max_diff
            alone += len(i)
            both += int(ok.sum())
            cross = is_test[i] != is_test[j]
            leak_alone.update(np.where(is_test[i], i, j)[cross].tolist())
            leak_both.update(np.where(is_test[i], i, j)[cross & ok].tolist())
        print(
            f"pHash ≤ {d}: {alone:,} pairs ({len(leak_alone):,} test images with a train twin); with "
            f"thumbnails ≤ {max_diff}: {both:,} pairs ({len(leak_both):,}); {time.perf_counter() - t:.2f} s"
        )


def run_audit(args: list[str]) -> tuple[float, float, list[str]]:
    """(wall seconds, peak RSS in MiB, output lines) of `cvtool audit ARGS` in a fresh process.

    Peak RSS comes from GNU time: a child's own rusage from Python would start from this
    process's size (it forks from it).
    """
    t = time.perf_counter()
    res = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-m", "cvtool", "audit", *args],
        capture_output=True,
        text=True,
    )
    rss = float(res.stderr.rsplit("maxrss_kb=", 1)[1].split()[0]) / 1024
    return time.perf_counter() - t, rss, [line for line in res.stdout.splitlines() if line.strip()]


def speed(fm: Path, work: Path) -> None:
    train, test, labels = str(fm / "train"), str(fm / "test"), str(fm / "test_labels.csv")
    print("\n| images | options | wall s | peak RSS MiB |")
    print("|---|---|---:|---:|")
    lines: list[str] = []
    for name, args in [
        ("10,000 (test)", [test]),
        ("60,000 (train)", [train]),
        ("70,000 (train + test)", [train, test, "--labels", labels]),
        ("70,000 (train + test)", [train, test, "--labels", labels, "--workers", "1"]),
        ("70,000 (train + test)", [train, test, "--labels", labels, "--workers", "2"]),
    ]:
        wall, rss, out = run_audit([*args, "-o", str(work / "audit")])
        options = " ".join(args[args.index("--workers") :]) if "--workers" in args else "default"
        print(f"| {name} | {options} | {wall:.1f} | {rss:.0f} |")
        if "--labels" in args and "--workers" not in args:
            lines = out
    print("\n" + "\n".join(f"    {line}" for line in lines))


def features(fm: Path, model: Path) -> None:
    files = sorted((fm / "test").glob("*.png"))
    t = time.perf_counter()
    f = penultimate_features(model, files, "cpu", 128, None)
    print(f"\n{len(files):,} test images: features {f.shape[1]}-d in {time.perf_counter() - t:.1f} s")
    jpegs = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in files[:1000]:
            q = Path(tmp) / f"{p.stem}.jpg"
            Image.open(p).save(q, quality=85)
            jpegs.append(q)
        fj = penultimate_features(model, jpegs, "cpu", 128, None)
    a, b = (
        f[:1000] / np.linalg.norm(f[:1000], axis=1, keepdims=True),
        fj / np.linalg.norm(fj, axis=1, keepdims=True),
    )
    cj = (a * b).sum(axis=1)
    p1 = np.percentile(cj, 1)
    print(f"cosine to the JPEG q85 re-encode (1,000 images): min {cj.min():.4f}, 1st percentile {p1:.4f}")
    for thr in (0.95, 0.99, 0.995, 0.998, 0.999):
        t = time.perf_counter()
        c = Components(len(f))
        has = np.zeros(len(f), bool)
        n = 0
        for i, j, _ in cosine_pairs(f, thr):
            c.merge(i, j)
            has[i] = has[j] = True
            n += len(i)
        dt = time.perf_counter() - t
        print(f"≥ {thr}: {n:,} pairs, {has.mean():.1%} of the test images have a feature twin ({dt:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", type=Path, required=True)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distance", type=int, default=4)
    ap.add_argument("--max-diff", type=float, default=3.0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    fm_files = sorted((a.fm / "train").rglob("*.png"))
    pick = rng.choice(len(fm_files), a.sample, replace=False)
    sets = {"Fashion-MNIST 28×28": [Image.open(fm_files[i]).convert("L") for i in pick]}
    for size in (32, 64, 128, 256):
        sets[f"random shapes {size}×{size}"] = [random_shapes(rng, size) for _ in range(200)]
    robustness(sets, a.distance, a.max_diff)
    fm_pairs(a.fm, a.distance, a.max_diff)
    with tempfile.TemporaryDirectory() as work:
        speed(a.fm, Path(work))
    if a.model:
        features(a.fm, a.model)


if __name__ == "__main__":
    main()
