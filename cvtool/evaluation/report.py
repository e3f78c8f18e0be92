"""report.html: one self-contained page with the evaluation's results.

Images are embedded as base64 data URIs and the styles are inline, so the file can be mailed or
attached to a course report and opens anywhere without its folder. Every name that comes from the
data (class names, file names, paths) is HTML-escaped. A few lines of script record on the page
whether all images decoded and whether any error happened (attributes on <html>), which the test
reads back from headless Chromium. The page points only to files the run wrote (`EvalResult.files`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from cvtool import __version__
from cvtool.atomic import atomic_write_text
from cvtool.evaluation.result import EvalResult

__all__ = ["write_report"]

TABLE_ROWS = 20  # rows of most-confused pairs and failures shown; the CSVs hold them all

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
figure { margin: 1rem 0; } figcaption { font-size: .85rem; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; } .grid figure { flex: 1 1 480px; }
.muted { color: #666; font-size: .85rem; }
"""

# Runs before the body is parsed so it also sees images that fail early.
_SCRIPT = """
(function () {
  var root = document.documentElement, errors = 0;
  window.addEventListener("error", function () {
    errors += 1;
    root.setAttribute("data-errors", errors);
  }, true);
  root.setAttribute("data-errors", 0);
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    root.setAttribute("data-images", ok + "/" + imgs.length);
  });
})();
"""


def _img(path: str | os.PathLike, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _calibration(r: EvalResult, out: Path) -> str:
    """The reliability diagram; with a calibrated card, before and after its temperature."""
    after = _figure(out / "reliability.png", "Accuracy against confidence; the gap is what ECE averages")
    if r.uncalibrated is None:
        return after
    u = r.uncalibrated
    before = _figure(
        out / "reliability_uncalibrated.png",
        f"Before calibration: log loss {u['log_loss']:.4f}, ECE {u['expected_calibration_error']:.4f}",
    )
    note = (
        f'<p class="muted">The card divides the logits by T = {u["temperature"]:.4g} (cvtool calibrate); '
        f"after it: log loss {r.log_loss or 0:.4f}, ECE {r.expected_calibration_error or 0:.4f}.</p>"
    )
    return f'<div class="grid">{before}{after}</div>{note}'


def _figure(path: str | os.PathLike | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    return f"<figure>{_img(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], name_cols: int = 1) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="name">{escape(str(v))}</td>' if i < name_cols else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary(r: EvalResult) -> str:
    rows: list[tuple[str, Any]] = [("images", r.n), ("accuracy", f"{r.accuracy:.4f}")]
    if r.without_leaks is not None:
        w = r.without_leaks
        acc = "—" if w.accuracy is None else f"{w.accuracy:.4f}"
        rows.append((f"accuracy without the {w.excluded} leaked images (see leaked_images.csv)", acc))
    if r.top5_accuracy is not None:
        rows.append(("top-5 accuracy", f"{r.top5_accuracy:.4f}"))
    if r.log_loss is not None:
        rows.append(("log loss", f"{r.log_loss:.4f}"))
    if r.expected_calibration_error is not None:
        rows.append(
            (f"expected calibration error ({r.ece_bins} bins)", f"{r.expected_calibration_error:.4f}")
        )
    for avg, a in (("macro", r.macro), ("weighted", r.weighted)):
        rows.append((f"{avg} precision / recall / F1", f"{a.precision:.3f} / {a.recall:.3f} / {a.f1:.3f}"))
    rows.append(("provider, speed", f"{r.provider}, {r.images_per_s:.0f} images/s"))
    if r.failed_images:
        rows.append(("unreadable images (excluded)", r.failed_images))
    return _table(["", ""], rows)


def _failures(r: EvalResult, out: Path) -> list[str]:
    if not r.failures:
        return ["<p>No misclassified images.</p>"]
    names = list(r.per_class)
    parts = []
    if "top_losses.png" in r.files:
        parts.append(
            _figure(out / "top_losses.png", "Predicted / true class, loss / probability of the prediction")
        )
    rows = [
        (
            f.rank,
            f.path.name,
            names[f.true],
            names[f.pred],
            f"{f.loss:.3f}",
            f"{f.p_true:.3f}",
            f"{f.p_pred:.3f}",
        )
        for f in r.failures[:TABLE_ROWS]
    ]
    parts.append(_table(["rank", "file", "true", "predicted", "loss", "p(true)", "p(predicted)"], rows, 0))
    see = "; see failures.csv" if "failures.csv" in r.files else ""
    parts.append(f'<p class="muted">{len(r.failures)} misclassified images in all{see}.</p>')
    return parts


def _faithfulness(r: EvalResult, kind: str) -> str:
    """The mean deletion / insertion AUC of one kind of map next to the random map's."""
    f = (r.faithfulness or {}).get(kind)
    if not f:
        return ""
    assert r.faithfulness is not None
    rows = [
        (kind, f["maps"], f"{f['deletion_auc']:.3f}", f"{f['insertion_auc']:.3f}"),
        ("random (seeded)", f["maps"], f"{f['random_deletion_auc']:.3f}", f"{f['random_insertion_auc']:.3f}"),
    ]
    note = (
        f'<p class="muted">Faithfulness: pixels deleted (set to the {escape(r.faithfulness["baseline"])} '
        f"baseline) or inserted most important first in {r.faithfulness['steps']} steps; AUC of "
        "p(class) over the fraction of pixels. A map that finds what the model uses has a lower "
        "deletion and a higher insertion AUC than the random map.</p>"
    )
    return note + _table(
        ["map", "maps", "deletion AUC (lower is better)", "insertion AUC (higher is better)"], rows
    )


def _suspects(r: EvalResult, out: Path) -> list[str]:
    """Suspected label errors: the gallery and the first rows (suspects.csv holds them all)."""
    s = r.suspects
    if s is None:
        return []
    names = list(r.per_class)
    parts = [
        "<h2>Suspected label errors</h2>",
        f'<p class="muted">Confident learning on {escape(s.source)} ({s.n} images): an image is '
        "suspect when its probability for another class reaches that class's mean self-confidence "
        "and the model's top class is not the given one; ranked by p(suspected) − p(given).</p>",
    ]
    if not s.suspects:
        return [*parts, "<p>No suspected label errors.</p>"]
    if "suspects.png" in r.files:
        parts.append(_figure(out / "suspects.png", "Given → suspected class, p(given) → p(suspected)"))
    rows = [
        (
            x.rank,
            Path(x.path).name,
            names[x.given],
            names[x.suspected],
            f"{x.p_given:.3f}",
            f"{x.p_suspected:.3f}",
            f"{x.margin:.3f}",
        )
        for x in s.suspects[:TABLE_ROWS]
    ]
    header = ["rank", "file", "given", "suspected", "p(given)", "p(suspected)", "margin"]
    parts.append(_table(header, rows, 0))
    parts.append(f'<p class="muted">{len(s.suspects)} suspects in all; see suspects.csv.</p>')
    return parts


def _cam(r: EvalResult) -> list[str]:
    if r.cam is None or not r.cam_maps:
        return []
    c = r.cam
    return [
        "<h2>Class activation maps</h2>",
        f'<p class="muted">ReciproCAM at {escape(c.layer)} ({c.cells} cells): the head of the model run '
        "on the feature map with only one cell kept; each cell shows p(class) from that cell alone, "
        "and the overlay that map min-max normalised to [0, 1] at the input size.</p>",
        _faithfulness(r, "cam"),
        *(_figure(m.png, m.caption) for m in r.cam_maps),
    ]


def _occlusion(r: EvalResult) -> list[str]:
    if r.occlusion is None or not r.occlusion_maps:
        return []
    o = r.occlusion
    return [
        "<h2>Occlusion maps</h2>",
        f'<p class="muted">{o.window}-pixel window, stride {o.stride}, baseline {escape(o.baseline)}: '
        "each pixel shows the class probability while a window covering it is occluded; "
        "low values mark what the model relies on.</p>",
        _faithfulness(r, "occlusion"),
        *(_figure(m.png, m.caption) for m in r.occlusion_maps),
    ]


def write_report(path: str | os.PathLike, result: EvalResult) -> Path:
    """Write report.html next to the figures it embeds (read from the same folder)."""
    path = Path(path)
    out = path.parent
    r = result
    confused = r.most_confused
    see_confused = "; see most_confused.csv" if "most_confused.csv" in r.files else ""
    title = f"Evaluation of {Path(r.model).name} on {r.data}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">model {escape(r.model)} · data {escape(r.data)} · cvtool {__version__}</p>',
        "<h2>Summary</h2>",
        _summary(r),
        "<h2>Per class</h2>",
        _table(
            ["class", "precision", "recall", "F1", "support"],
            [
                (name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", c.support)
                for name, c in r.per_class.items()
            ],
        ),
        "<h2>Confusion matrices</h2>",
        '<p class="muted">Rows are the true classes, columns the predicted ones.</p>',
        '<div class="grid">',
        _figure(out / "confusion_matrix.png", "Counts"),
        _figure(out / "confusion_matrix_normalized.png", "Row-normalized: recall on the diagonal"),
        "</div>",
        "<h2>Most confused pairs</h2>",
        _table(["true", "predicted", "count"], confused[:TABLE_ROWS], name_cols=2)
        if confused
        else "<p>No misclassified images.</p>",
        f'<p class="muted">{len(confused)} pairs in all{see_confused}.</p>' if confused else "",
        "<h2>Calibration</h2>",
        _calibration(r, out),
        "<h2>Highest-loss failures</h2>",
        *_failures(r, out),
        *_suspects(r, out),
        *_cam(r),
        *_occlusion(r),
        "</body></html>",
    ]
    atomic_write_text(path, "\n".join(p for p in parts if p) + "\n")
    return path
