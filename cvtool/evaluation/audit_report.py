"""audit.html: the groups of twins an audit found, side by side, in one self-contained page.

Thumbnails are embedded as base64 PNG data URIs and the styles are inline (as in report.html), so
the page opens anywhere without its folder. Every name from the data (folders, labels, file names)
is HTML-escaped. Label conflicts come first, then groups that span folders (leakage), then groups
within one folder; a page shows at most MAX_GROUPS groups per section and MAX_MEMBERS images per
group, and says how many more duplicates.csv lists.
"""

from __future__ import annotations

import base64
import io
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from cvtool import __version__
from cvtool.atomic import atomic_write_text
from cvtool.images import ImageError, load_image

if TYPE_CHECKING:
    from cvtool.evaluation.audit import AuditResult, Group

__all__ = ["MAX_GROUPS", "MAX_MEMBERS", "write_audit_html"]

MAX_GROUPS = 100
MAX_MEMBERS = 12
THUMB = 96  # longest side of a thumbnail, in pixels; smaller images are shown enlarged, unsmoothed

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid #eee; text-align: left; }
.group { margin: 1rem 0; padding: .5rem; border: 1px solid #eee; }
.group.conflict { border-color: #d33; }
.group h3 { font-size: .95rem; margin: 0 0 .4rem 0; font-weight: 600; }
.row { display: flex; flex-wrap: wrap; gap: .6rem; }
figure { margin: 0; width: 110px; } figcaption { font-size: .75rem; color: #555; word-break: break-all; }
img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #eee;
      background: #f6f6f6; }
.missing { width: 96px; height: 96px; display: flex; align-items: center; justify-content: center;
           font-size: .7rem; color: #999; border: 1px dashed #ccc; }
.muted { color: #666; font-size: .85rem; }
"""


def _thumb(path: Path) -> str:
    """The image as an <img> data URI, or a placeholder when it cannot be read any more."""
    try:
        img = load_image(path)
    except ImageError as e:
        return f'<div class="missing">{escape(e.reason)}</div>'
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(path.name)}">'


def _group(r: AuditResult, g: Group) -> str:
    names = [f.name for f in r.folders]
    folders = sorted({names[int(r.folder_of[m])] for m in g.members})
    labels = sorted({r.labels[m] for m in g.members} - {""})
    unit = "1 − cosine" if g.kind == "feature" else "bits"
    head = (
        f"group {g.id} · {g.kind} · {len(g.members)} images · {', '.join(folders)}"
        + (f" · labels {', '.join(labels)}" if labels else "")
        + (" · label conflict" if g.conflict else "")
    )
    figures = []
    for m, d in list(zip(g.members, g.distance, strict=True))[:MAX_MEMBERS]:
        p = r.files[m]
        dist = f"{d:.3f}" if g.kind == "feature" else f"{int(d)}"
        caption = f"{names[int(r.folder_of[m])]}" + (f" / {r.labels[m]}" if r.labels[m] else "")
        figures.append(
            f"<figure>{_thumb(p)}<figcaption>{escape(caption)}<br>{escape(p.name)}<br>"
            f"{escape(unit)}: {dist}</figcaption></figure>"
        )
    more = len(g.members) - MAX_MEMBERS
    tail = f'<p class="muted">… and {more} more in duplicates.csv</p>' if more > 0 else ""
    cls = "group conflict" if g.conflict else "group"
    return f'<div class="{cls}"><h3>{escape(head)}</h3><div class="row">{"".join(figures)}</div>{tail}</div>'


def _section(r: AuditResult, title: str, groups: list[Group], empty: str) -> list[str]:
    parts = [f"<h2>{escape(title)} ({len(groups)})</h2>"]
    if not groups:
        return [*parts, f'<p class="muted">{escape(empty)}</p>']
    parts += [_group(r, g) for g in groups[:MAX_GROUPS]]
    if len(groups) > MAX_GROUPS:
        parts.append(f'<p class="muted">{len(groups) - MAX_GROUPS} more groups in duplicates.csv.</p>')
    return parts


def write_audit_html(path: str | os.PathLike, r: AuditResult) -> Path:
    """Write audit.html for an audit's result (thumbnails decoded again from the files)."""
    path = Path(path)
    names = [f.name for f in r.folders]
    spans = [g for g in r.groups if not g.conflict and len({int(r.folder_of[m]) for m in g.members}) > 1]
    inside = [g for g in r.groups if not g.conflict and g not in spans]
    s = r.settings
    setting = f"pHash within {s['distance']} bits and thumbnails within {s['max_diff']} grey levels"
    if s.get("model"):
        setting += f"; penultimate features of {s['model']} with cosine ≥ {s['similarity']}"
    folder_rows = "".join(
        f"<tr><td>{escape(f.name)}</td><td>{escape(str(f.path))}</td><td>{f.images}</td>"
        f"<td>{'yes' if f.labeled else 'no'}</td>"
        f"<td>{escape('; '.join(f'{k}: {v}' for k, v in f.skipped.items()))}</td></tr>"
        for f in r.folders
    )
    title = f"Duplicate audit of {', '.join(names)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape(setting)} · {r.seconds:.1f} s · cvtool {__version__}</p>',
        "<h2>Summary</h2>",
        "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in r.summary_lines()) + "</ul>",
        "<table><thead><tr><th>folder</th><th>path</th><th>images</th><th>labeled</th>"
        f"<th>passed over</th></tr></thead><tbody>{folder_rows}</tbody></table>",
        f'<p class="muted">{len(r.unreadable)} unreadable image(s), listed in unreadable.csv.</p>'
        if r.unreadable
        else "",
        *_section(r, "Label conflicts", [g for g in r.groups if g.conflict], "No image is under two labels."),
        *_section(r, "Across folders", spans, "No group spans two folders."),
        *_section(r, "Within a folder", inside, "No duplicates within a folder."),
        "</body></html>",
    ]
    atomic_write_text(path, "\n".join(p for p in parts if p) + "\n")
    return path
