"""report.html: self-contained, escaped, and it renders in headless Chromium with every image shown."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_image_folder
from helpers_evaluate import linear_model

from cvtool.evaluation.run import evaluate
from cvtool.infer.session import open_model

HOSTILE = ("circle", "square", "stripes", "<script>alert(1)</script>", "x&y", 'q"uote', "ok", "z")
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
NO_CHROMIUM = (
    "headless Chromium is not installed (Debian: apt-get install -y chromium); "
    "the report rendering test needs it"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = make_image_folder(root / "data", per_class=8, seed=2)
    model = linear_model(root / "m.onnx", HOSTILE, seed=4)
    out = root / "out"
    evaluate(open_model(model, device="cpu"), data, out, failures=6, occlusion=1, window=8, stride=8)
    return out / "report.html"


def test_report_is_self_contained_and_escaped(report):
    html = report.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "x&amp;y" in html
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) >= 6  # 2 confusion matrices, reliability, top losses, 2 occlusion figures
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # Nothing is fetched from elsewhere: no external scripts, styles or links.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert html.count("<script>") == 1  # the report's own load check, nothing from the data


def _render(html: Path, tmp_path: Path) -> tuple[str, str]:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=10000",  # let the load event fire before the DOM is dumped
        "--dump-dom",
        html.resolve().as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


def _state(dom: str) -> tuple[int, int, int]:
    root = re.search(r"<html[^>]*>", dom).group(0)
    loaded, total = map(int, re.search(r'data-images="(\d+)/(\d+)"', root).groups())
    errors = int(re.search(r'data-errors="(\d+)"', root).group(1))
    return loaded, total, errors


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_renders_in_headless_chromium_with_all_images(report, tmp_path):
    dom, _ = _render(report, tmp_path)
    loaded, total, errors = _state(dom)
    assert total == report.read_text(encoding="utf-8").count("<img ") >= 6
    assert loaded == total
    assert errors == 0
    assert "Confusion matrices" in dom and "Occlusion maps" in dom


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_render_check_notices_a_broken_image(report, tmp_path):
    # The same page with one image's data corrupted: the check must report it.
    html = report.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1), "utf-8")
    loaded, total, errors = _state(_render(broken, tmp_path)[0])
    assert loaded == total - 1 and errors >= 1
