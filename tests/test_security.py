"""Names from cards, CSVs and files never escape the output folder and are escaped in report.html."""

from __future__ import annotations

import csv
import os

import onnx
from conftest import make_flat_test
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import ModelCard
from cvtool.export.onnx_export import attach_card
from cvtool.onnxtools.card_edit import read_card

HOSTILE = ("../../escaped", "<img src=x onerror=alert(1)>", "..")


def test_hostile_class_and_file_names_stay_inside_the_output(rgb_model, tmp_path):
    proto = onnx.load(str(rgb_model))
    card = read_card(proto)
    hostile = ModelCard.from_dict({**card.to_dict(), "class_names": list(HOSTILE)})
    model = tmp_path / "hostile.onnx"
    onnx.save(attach_card(proto, hostile), str(model))

    test_dir, labels = make_flat_test(tmp_path / "work" / "test", per_class=4)
    os.rename(test_dir / "1.png", test_dir / "..%2F..%2Fx<script>.png")  # a hostile file name too
    names = {"circle": HOSTILE[0], "square": HOSTILE[1], "stripes": HOSTILE[2]}
    rows = list(csv.reader(labels.open()))
    fixed = tmp_path / "work" / "labels.csv"
    with fixed.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for i, label in rows[1:]:
            w.writerow(["..%2F..%2Fx<script>" if i == "1" else i, names[label]])

    out = tmp_path / "work" / "out"
    before = {p for p in tmp_path.rglob("*")}
    r = CliRunner().invoke(
        app,
        ["evaluate", str(test_dir), "--labels", str(fixed), "--model", str(model), "-o", str(out),
         "--failures", "20", "--occlusion", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    created = {p for p in tmp_path.rglob("*")} - before - {out}
    assert created and all(out in p.parents for p in created), sorted(map(str, created - {out}))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "x<script>" not in html
