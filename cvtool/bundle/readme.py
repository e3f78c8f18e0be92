"""The bundle's README.md: the notebook cells that install cvtool offline and predict with its models."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render_readme"]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render_readme(
    dataset: str,
    version: str,
    python: str,
    platform: str,
    ort_package: str,
    models: Sequence[tuple[str, Sequence[str]]],
    wheels: int,
    wheels_bytes: int,
) -> str:
    """Markdown for a bundle uploaded as the Kaggle dataset `dataset`; models are (file, classes)."""
    root = f"/kaggle/input/{dataset}"
    extra = f" {ort_package}" if ort_package == "onnxruntime" else ""
    test = "/kaggle/input/<competition>/test"
    paths = [f"{root}/models/{name}" for name, _ in models]
    same_classes = len({tuple(c) for _, c in models}) == 1
    if len(models) > 1 and same_classes:
        ensemble = " ".join(f"-m {p}" for p in paths)
        predict = [f"!cvtool predict {test} {ensemble} -o submission.csv"]
        predict_note = "The models are averaged (an ensemble; `--model-weights 1,2` weighs them). One alone:"
        alone = [f"!cvtool predict {test} -m {p} -o submission.csv" for p in paths]
    else:
        predict = [f"!cvtool predict {test} -m {p} -o submission.csv" for p in paths]
        predict_note = "" if len(models) == 1 else "One cell per model (their classes differ: no ensemble)."
        alone = []
    api_model = f'"{paths[0]}"' if len(paths) == 1 else "[" + ", ".join(f'"{p}"' for p in paths) + "]"
    table = "\n".join(
        f"| `models/{name}` | {len(c)}: {', '.join(c[:10])}{' …' if len(c) > 10 else ''} |"
        for name, c in models
    )

    gpu_note = (
        []
        if extra
        else [
            "",
            "onnxruntime-gpu runs on the GPU when CUDA 12 and cuDNN 9 load (the PyTorch of Kaggle's image "
            "brings them), else on the CPU; `--device cuda` says why it cannot.",
        ]
    )
    lines = [
        "# cvtool offline bundle",
        "",
        f"cvtool {version} with its runtime dependencies ({ort_package}, no PyTorch) as wheels for CPython "
        f"{python} on `{platform}`, and {len(models)} model(s). Upload this folder as a Kaggle dataset "
        f"(called `{dataset}` below: put your dataset's name there), add it and the competition to the "
        "notebook, and turn the notebook's internet off.",
        "",
        "## Install (first cell)",
        "",
        "```",
        f"!pip install --no-index --find-links {root}/wheels cvtool{extra}",
        "```",
        "",
        "Only one ONNX Runtime package may be installed: if the notebook already has the other one "
        f"(`!pip list | grep onnxruntime`), remove it first (`!pip uninstall -y {_other(ort_package)}`).",
        *gpu_note,
        "",
        "## Predict",
        "",
        "```",
        *predict,
        "```",
    ]
    if predict_note:
        lines += ["", predict_note]
    if alone:
        lines += ["", "```", *alone, "```"]
    lines += [
        "",
        "The submission's rows are `id,label` (id: the file stem); `--sample-submission "
        "/kaggle/input/<competition>/sample_submission.csv` takes the competition's header and row order.",
        "",
        "## Python API",
        "",
        "```python",
        "import csv",
        "from pathlib import Path",
        "from cvtool import Predictor",
        "",
        f"p = Predictor({api_model})",
        f'files = sorted(Path("{test}").iterdir())',
        "pred = p.predict(files)                 # pred.probs: (N, classes), pred.labels: class names",
        'with open("submission.csv", "w", newline="") as out:',
        "    w = csv.writer(out)",
        '    w.writerow(["id", "label"])',
        "    w.writerows(zip((f.stem for f in files), pred.labels))",
        "```",
        "",
        "## Contents",
        "",
        "| model | classes |",
        "|---|---|",
        table,
        "",
        f"`wheels/`: {wheels} wheels, {_mb(wheels_bytes)}. `bundle.json` lists every file with its SHA-256.",
        "",
    ]
    return "\n".join(lines)


def _other(ort_package: str) -> str:
    return "onnxruntime-gpu" if ort_package == "onnxruntime" else "onnxruntime"
