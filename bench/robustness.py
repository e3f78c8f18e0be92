"""Build every awkward input, run the real commands on it, and write bench/ROBUSTNESS.md.

    python bench/robustness.py            # writes bench/ROBUSTNESS.md

Each image case is a folder holding one good image (`1.png`) and the case file (`2.<ext>`), so the
table shows what happens to the case while the rest of the run goes on. `predict` uses the default
`--on-error fill`; `evaluate` gets the same files as an ImageFolder. Model cases run `predict` on a
folder of good images. Nothing here is timed; the outcomes are read from exit codes, output rows
and the commands' own messages.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cvtool.contract import CARD_METADATA_KEY, ModelCard

CARD = ModelCard(class_names=("a", "b"), channels=3, input_size=(16, 16))


def tiny_model(
    path: Path, shape: list, inputs: int = 1, k: int = 2, card: str | None = CARD.to_json()
) -> Path:
    """Flatten → MatMul classifier with the declared input layout."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(int(np.prod(shape[1:])), k)).astype(np.float32), "W")
    names = [f"x{i}" for i in range(inputs)]
    nodes, src = [], names[0]
    if inputs == 2:
        nodes.append(helper.make_node("Add", names, ["s"]))
        src = "s"
    nodes += [helper.make_node("Flatten", [src], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], k])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:
        p = model.metadata_props.add()
        p.key, p.value = CARD_METADATA_KEY, card
    onnx.save(model, str(path))
    return path


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.new("RGB", (40, 20), (200, 10, 10)), "JPEG", exif=exif)


def image_cases() -> list[tuple[str, str, bytes | None]]:
    """(description, file name, content; None = special handling)."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    pal = Image.new("P", (9, 9), 3)
    pal.info["transparency"] = 3
    return [
        ("EXIF-rotated JPEG (orientation 6)", "2.jpg", exif_rotated()),
        ("CMYK JPEG", "2.jpg", encoded(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG")),
        ("16-bit grayscale PNG", "2.png", encoded(Image.fromarray(np.full((9, 9), 40000, np.uint16)), "PNG")),
        ("palette PNG with transparency", "2.png", encoded(pal, "PNG", transparency=3)),
        ("RGBA PNG", "2.png", encoded(Image.new("RGBA", (9, 9), (0, 0, 0, 0)), "PNG")),
        ("LA PNG", "2.png", encoded(Image.new("LA", (9, 9), (50, 128)), "PNG")),
        ("1-bit PNG", "2.png", encoded(Image.new("1", (9, 9), 1), "PNG")),
        ("1×1 pixel", "2.png", encoded(Image.new("RGB", (1, 1)), "PNG")),
        ("4000×10 pixels", "2.png", encoded(Image.new("RGB", (4000, 10)), "PNG")),
        ("grayscale file, RGB model", "2.png", encoded(Image.new("L", (20, 20), 90), "PNG")),
        ("zero-byte file", "2.jpg", b""),
        ("text file named .jpg", "2.jpg", b"this is not an image"),
        ("truncated JPEG", "2.jpg", encoded(noise, "JPEG")[:600]),
        ("truncated PNG", "2.png", encoded(noise, "PNG")[:2000]),
        ("PNG header claiming 50,000×50,000", "2.png", png_bomb(50_000, 50_000)),
        ("dangling symbolic link", "2.png", None),
        ("unicode and space in the name", "été 2.png", encoded(noise, "PNG")),
        ("hidden files (.DS_Store, ._2.png)", ".DS_Store", b"\0\0\0\1Bud1"),
        ("non-image extension (notes.txt)", "notes.txt", b"hello"),
        ("directory named like an image", "2.jpg", None),
    ]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cvtool", *args], capture_output=True, text=True, timeout=300
    )


def message(r: subprocess.CompletedProcess, needle: str = "") -> str:
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    picked = [ln for ln in lines if needle and needle in ln] or [
        ln for ln in lines if any(w in ln for w in ("error", "skipped", "could not", "warning"))
    ]
    text = picked[0] if picked else ""
    return text.replace("|", "\\|")[:110]


def image_rows(tmp: Path, model: Path) -> list[str]:
    rows = []
    for desc, name, content in image_cases():
        case = tmp / f"case{len(rows)}"
        flat, tree = case / "flat", case / "tree" / "a"
        for d in (flat, tree):
            d.mkdir(parents=True)
            Image.new("RGB", (20, 20), (30, 60, 90)).save(d / "1.png")
            target = d / name
            if content is not None:
                target.write_bytes(content)
            elif desc.startswith("dangling"):
                target.symlink_to(d / "missing.png")
            else:
                target.mkdir()
            if name == ".DS_Store":
                (d / "._2.png").write_bytes(b"\0\0")
        sub = case / "sub.csv"
        p = run(["predict", str(flat), "--model", str(model), "-o", str(sub)])
        ids = [r[0] for r in list(csv.reader(sub.open(encoding="utf-8")))[1:]] if sub.exists() else []
        stem = Path(name).stem
        listed = (case / "sub.failures.csv").exists() and stem in (case / "sub.failures.csv").read_text(
            "utf-8"
        )
        row_state = "row written" if stem in ids else "no row"
        if listed:
            row_state += ", listed in failures"
        e = run(
            ["evaluate", str(case / "tree"), "--model", str(model), "-o", str(case / "eval"), "--no-report"]
        )
        metrics = case / "eval" / "metrics.json"
        n = json.loads(metrics.read_text())["n"] if metrics.exists() else "?"
        evaluated = f"exit {e.returncode}; {n} image(s) scored"
        rows.append(f"| {desc} | exit {p.returncode}; {row_state} | {message(p)} | {evaluated} |")
    return rows


def model_rows(tmp: Path) -> list[str]:
    imgs = tmp / "imgs"
    imgs.mkdir()
    for i in range(1, 4):
        Image.new("RGB", (20, 20), (i * 40, 60, 90)).save(imgs / f"{i}.png")
    bad = tmp / "not_onnx.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    cases = [
        ("not an ONNX file", bad, []),
        ("NHWC input", tiny_model(tmp / "nhwc.onnx", ["N", 16, 16, 3], card=None), []),
        ("4-channel input", tiny_model(tmp / "four.onnx", ["N", 4, 16, 16], card=None), []),
        ("two inputs", tiny_model(tmp / "two.onnx", ["N", 3, 16, 16], inputs=2), []),
        ("fixed batch 1", tiny_model(tmp / "fixed1.onnx", [1, 3, 16, 16]), []),
        ("card missing", tiny_model(tmp / "nocard.onnx", ["N", 3, 16, 16], card=None), []),
        ("card missing, flags given", tmp / "nocard.onnx", ["--classes", "cat,dog"]),
        ("card is malformed JSON", tiny_model(tmp / "badcard.onnx", ["N", 3, 16, 16], card="{oops"), []),
        ("card names 3 classes, model outputs 2",
         tiny_model(tmp / "mismatch.onnx", ["N", 3, 16, 16], card=ModelCard(class_names=("a", "b", "c"),
                    input_size=(16, 16)).to_json()), []),
        ("--device cuda without CUDA", tmp / "fixed1.onnx", ["--device", "cuda"]),
    ]  # fmt: skip
    rows = []
    for desc, model, extra in cases:
        out = tmp / f"m{len(rows)}.csv"
        r = run(["predict", str(imgs), "--model", str(model), "-o", str(out), *extra])
        n = len(list(csv.reader(out.open()))) - 1 if out.exists() else 0
        rows.append(f"| {desc} | exit {r.returncode}; {n} rows | {message(r)} |")
    return rows


TRAINING = [  # (fault, what happens, the test that checks it)
    ("SIGKILL mid-run, then `--resume`",
     "checkpoints are renamed into place, so `last.pt` is the last completed epoch; `--resume` "
     "continues from it and finishes the run", "tests/test_train_faults.py"),
    ("kill during a checkpoint save",
     "the temporary file is never renamed; the previous `last.pt`/`best.pt` stays loadable",
     "tests/test_train_faults.py"),
    ("NaN/inf loss",
     "stops before the optimiser step: \"loss became nan …; lower --lr (the last good checkpoint is "
     "kept)\", exit 2; `best.pt`/`last.pt` of the last finished epoch remain", "tests/test_train_faults.py"),
    ("corrupt training image", "reported once with path and reason, skipped; the epoch goes on",
     "tests/test_train.py"),
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("ROBUSTNESS.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        model = tiny_model(tmp / "model.onnx", ["N", 3, 16, 16])
        # Messages name files by their temporary path; show it as $TMP so the table is stable.
        images = [r.replace(str(tmp), "$TMP") for r in image_rows(tmp, model)]
        models = [r.replace(str(tmp), "$TMP") for r in model_rows(tmp)]
    text = "\n".join(
        [
            "# Robustness: input → what each command does",
            "",
            "Generated by `python bench/robustness.py` (runs the real commands on generated files).",
            "Exit codes: 0 ok, 1 some items failed (listed), 2 usage or unusable input.",
            "`predict` runs with the default `--on-error fill`: an unreadable image still gets a row,",
            "labeled with the most-predicted class, and is listed in `<output>.failures.csv`.",
            "",
            "## Images",
            "",
            "One good image plus the case: a flat folder for predict, an ImageFolder for evaluate.",
            "",
            "| input | predict | predict's message | evaluate |",
            "|---|---|---|---|",
            *images,
            "",
            "## Models (predict on three good images)",
            "",
            "| model | predict | message |",
            "|---|---|---|",
            *models,
            "",
            "## Training",
            "",
            "| fault | what happens | test |",
            "|---|---|---|",
            *(f"| {a} | {b} | {c} |" for a, b, c in TRAINING),
            "",
        ]
    )
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
