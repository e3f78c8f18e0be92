"""cvtool audit: exact, near and feature twins within and across folders, label conflicts, leaks."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from conftest import CLASSES
from helpers_evaluate import _save, linear_model
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import ModelCard
from cvtool.evaluation.audit import AuditError, audit
from cvtool.evaluation.features import penultimate_tensor
from cvtool.evaluation.imagehash import Components, cosine_pairs, fingerprint, hamming, near_pairs, phash
from cvtool.evaluation.run import evaluate
from cvtool.infer.session import open_model

runner = CliRunner()


def random_shapes(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Unrelated pictures: a random background, 2-5 random ellipses and boxes, a little noise."""
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0, x1, y1 = rng.integers(0, size, 4)
        box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    a = np.asarray(img).astype(np.int16) + rng.normal(0, 8, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 85) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_phash_is_imagehash_bit_for_bit():
    rng = np.random.default_rng(0)
    images = [random_shapes(rng, int(rng.integers(20, 130))) for _ in range(60)]
    images += [images[0].convert("L"), Image.new("RGB", (40, 30), (9, 9, 9))]
    ours = phash(np.stack([fingerprint(im).gray for im in images]))
    theirs = [int(str(imagehash.phash(im)), 16) for im in images]
    assert ours.tolist() == theirs


def test_exact_digest_is_of_pixels_not_files(tmp_path):
    img = random_shapes(np.random.default_rng(1))
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "b.png", compress_level=9)
    img.save(tmp_path / "c.bmp")
    img.convert("L").convert("RGB").save(tmp_path / "gray_rgb.png")
    img.convert("L").save(tmp_path / "gray_l.png")
    jpeg(img).save(tmp_path / "d.png")
    d = {p.name: fingerprint(Image.open(p)).digest for p in tmp_path.iterdir()}
    assert d["a.png"] == d["b.png"] == d["c.bmp"]
    assert d["gray_rgb.png"] == d["gray_l.png"] != d["a.png"]
    assert d["d.png"] != d["a.png"]  # JPEG is lossy: a near twin, not an exact one


def _brute(h: np.ndarray, d: int) -> set[tuple[int, int]]:
    dist = hamming(h[:, None], h[None, :])
    i, j = np.nonzero(np.triu(dist <= d, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("seed", range(8))
def test_multi_index_search_finds_exactly_the_brute_force_pairs(seed):
    rng = np.random.default_rng(seed)
    n, d = 300, int(rng.integers(0, 9))
    # Clusters of hashes a few bit flips apart, so there are pairs at every distance.
    centres = rng.integers(0, 2**63, 15, dtype=np.uint64) << np.uint64(1)
    h = centres[rng.integers(0, 15, n)]
    for _ in range(8):
        flip = rng.random(n) < 0.5
        h[flip] ^= np.uint64(1) << rng.integers(0, 64, flip.sum()).astype(np.uint64)
    found: list[tuple[int, int]] = []
    for i, j, dist in near_pairs(h, d, chunk=50):
        np.testing.assert_array_equal(dist, hamming(h[i], h[j]))
        found += list(zip(i.tolist(), j.tolist(), strict=True))
    assert len(found) == len(set(found))  # each pair once
    assert set(found) == _brute(h, d) and len(found) > 0


def test_cosine_pairs_match_the_full_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 12)).astype(np.float32)
    x[5] = 0  # no direction: pairs with nothing
    x[300:310] = x[0] * rng.uniform(0.5, 2.0, (10, 1))  # same direction as row 0
    got = {
        (a, b)
        for i, j, _ in cosine_pairs(x, 0.7, block=128)
        for a, b in zip(i.tolist(), j.tolist(), strict=True)
    }
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    i, j = np.nonzero(np.triu(unit @ unit.T >= 0.7, 1))
    assert got == set(zip(i.tolist(), j.tolist(), strict=True)) and (0, 300) in got


def test_components_match_a_plain_union_find():
    rng = np.random.default_rng(0)
    for _ in range(10):
        n, m = 200, int(rng.integers(0, 300))
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        c = Components(n)
        for s in range(0, m, 17):
            c.merge(i[s : s + 17], j[s : s + 17])
        parent = list(range(n))

        def find(x: int, parent: list[int] = parent) -> int:
            while parent[x] != x:
                x = parent[x]
            return x

        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
        assert c.labels().tolist() == [find(x) for x in range(n)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """train/<class>/ and a flat test/ of unrelated images, with planted twins."""
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(7)
    train, test = root / "train", root / "test"
    for c in CLASSES:
        (train / c).mkdir(parents=True)
    test.mkdir()
    imgs = [random_shapes(rng) for _ in range(200)]
    for k, img in enumerate(imgs[:150]):
        img.save(train / CLASSES[k % 3] / f"{k}.png")
    for k, img in enumerate(imgs[150:], start=150):
        img.save(test / f"{k}.png")
    # Exact: a PNG saved twice under other names (train/circle/0 → test), a BMP of the same pixels
    # in the same class (train/circle/3), one image under two class folders (train/square/1).
    imgs[0].save(test / "copy_of_0.png")
    imgs[3].save(train / "circle" / "again_3.bmp")
    imgs[1].save(train / "circle" / "also_1.png")
    # Near: a JPEG at quality 85, a 1-pixel smaller resize, and a 1-pixel crop of a 128-px image.
    imgs[6].save(test / "reencoded_6.jpg", quality=85)
    imgs[9].resize((63, 63), Image.Resampling.BILINEAR).save(test / "resized_9.png")
    big = random_shapes(rng, 128)
    big.save(train / "stripes" / "big.png")
    big.crop((1, 0, 128, 128)).save(test / "shifted_big.png")
    labels = root / "test_labels.csv"
    labels.write_text(
        "id,label\n" + "".join(f"{k},{CLASSES[k % 3]}\n" for k in range(150, 200)) + "copy_of_0,square\n"
    )
    return root, train, test, labels


def _groups(out: Path) -> list[dict[str, set]]:
    rows = list(csv.DictReader((out / "duplicates.csv").open(encoding="utf-8")))
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["group"], []).append(row)
    return [
        {
            "kind": {m["kind"] for m in g},
            "files": {Path(m["file"]).name for m in g},
            "labels": {m["label"] for m in g},
            "conflict": {m["conflict"] for m in g},
        }
        for g in by.values()
    ]


def test_planted_twins_are_found_and_nothing_else(planted, tmp_path):
    root, train, test, labels = planted
    out = tmp_path / "out"
    r = audit([train, test], out, [labels])
    groups = _groups(out)
    found = {(g["kind"].pop(), frozenset(g["files"])) for g in groups}
    assert found == {
        ("exact", frozenset({"0.png", "copy_of_0.png"})),
        ("exact", frozenset({"3.png", "again_3.bmp"})),
        ("exact", frozenset({"1.png", "also_1.png"})),
        ("near", frozenset({"6.png", "reencoded_6.jpg"})),
        ("near", frozenset({"9.png", "resized_9.png"})),
        ("near", frozenset({"big.png", "shifted_big.png"})),
    }
    by_files = {frozenset(g["files"]): g for g in groups}
    # 0 is circle in train and square in the test CSV; 1 is under square/ and circle/.
    assert by_files[frozenset({"0.png", "copy_of_0.png"})]["conflict"] == {"yes"}
    assert by_files[frozenset({"1.png", "also_1.png"})]["labels"] == {"square", "circle"}
    assert by_files[frozenset({"1.png", "also_1.png"})]["conflict"] == {"yes"}
    assert by_files[frozenset({"3.png", "again_3.bmp"})]["conflict"] == {"no"}
    assert r.across[("test", "train")] == {"exact": 1, "near": 3, "feature": 0}
    assert r.within["train"] == {"exact": 4, "near": 0, "feature": 0}
    summary = json.loads((out / "summary.json").read_text())
    assert "test: 4 image(s) have a twin in train (1 exact, 3 near)" in summary["lines"]
    assert summary["label_conflicts"] == {"exact": 2, "near": 0, "feature": 0}
    assert [f["images"] for f in summary["folders"]] == [153, 54]
    assert all(Path(row["file"]).is_absolute() for row in csv.DictReader((out / "duplicates.csv").open()))


def test_no_false_pairs_among_unrelated_images(tmp_path):
    rng = np.random.default_rng(11)
    folder = tmp_path / "unrelated"
    folder.mkdir()
    for k in range(200):
        random_shapes(rng, int(rng.choice([32, 64, 96]))).save(folder / f"{k}.png")
    r = audit([folder], tmp_path / "out")
    assert r.groups == []
    assert r.summary_lines()[0] == "unrelated: no image has a twin within unrelated"


def test_audit_html_is_self_contained_and_escaped(tmp_path):
    rng = np.random.default_rng(2)
    hostile = '<b>x&"q'
    (tmp_path / "a" / hostile).mkdir(parents=True)
    (tmp_path / "a" / "ok").mkdir()
    img = random_shapes(rng)
    img.save(tmp_path / "a" / hostile / "<i>.png")
    img.save(tmp_path / "a" / "ok" / "1.png")
    audit([tmp_path / "a"], tmp_path / "out")
    html = (tmp_path / "out" / "audit.html").read_text(encoding="utf-8")
    assert "<b>" not in html and "<i>.png" not in html
    assert "&lt;b&gt;x&amp;&quot;q" in html and "&lt;i&gt;.png" in html
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html
    assert "label conflict" in html


def _pooled_model(path: Path) -> Path:
    """logits = Gemm(mean colour): the penultimate features are the image's mean colour."""
    inits = [
        numpy_helper.from_array(np.eye(3, dtype=np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fc.bias"),
    ]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    card = ModelCard(
        class_names=CLASSES,
        channels=3,
        input_size=(32, 32),
        resize="stretch",
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
    )
    return _save(helper.make_graph(nodes, "pooled", [x], [y], inits), card, path)


def test_feature_twins_the_hashes_miss(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # Saturated colours far apart on the unit sphere; a mirror image has the same mean colour.
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10)]
    for k, c in enumerate(colours):
        img = Image.new("RGB", (32, 32), c)
        ImageDraw.Draw(img).rectangle([0, 0, 10, 31], fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
        img.save(tmp_path / "a" / f"{k}.png")
        if k == 0:
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "b" / "mirrored_0.png")
            jpeg(img).save(tmp_path / "b" / "jpeg_0.png")
    model = _pooled_model(tmp_path / "m.onnx")
    assert penultimate_tensor(__import__("onnx").load(str(model))) == "features"
    r = audit([tmp_path / "a", tmp_path / "b"], tmp_path / "out", model=model, similarity=0.999)
    kinds = {(g.kind, frozenset(r.files[m].name for m in g.members)) for g in r.groups}
    # The JPEG is a near twin; the mirror only a feature twin, grouped with the pair it matches.
    assert ("near", frozenset({"0.png", "jpeg_0.png"})) in kinds
    feature = [g for g in r.groups if g.kind == "feature"]
    assert len(feature) == 1 and "mirrored_0.png" in {r.files[m].name for m in feature[0].members}
    assert all(0 <= d <= 0.001 for d in feature[0].distance)
    assert r.across[("b", "a")] == {"exact": 0, "near": 1, "feature": 1}


def test_cli_audit_exit_codes(planted, tmp_path):
    root, train, test, labels = planted
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(test / "150.png", flat / "150.png")
    (flat / "broken.png").write_bytes(b"not an image")
    res = runner.invoke(app, ["audit", str(train), str(flat), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert "flat: no image has a twin in train" in res.output
    rows = list(csv.reader((tmp_path / "o" / "unreadable.csv").open()))
    assert rows[1][0].endswith("broken.png") and len(rows) == 2
    # A folder inside another, and more --labels than flat folders: one line, exit 2.
    res = runner.invoke(app, ["audit", str(train), str(train / "circle"), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "inside" in res.output
    res = runner.invoke(app, ["audit", str(train), "--labels", str(labels), "-o", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "--labels" in res.output and "Traceback" not in res.output


def test_exclude_leaks_removes_exactly_the_leaked_images(planted, tmp_path):
    root, train, test, labels = planted
    audit([train, test], tmp_path / "audit", [labels])
    model = linear_model(tmp_path / "m.onnx", CLASSES, size=32, seed=3)
    m = open_model(model, device="cpu")
    # Evaluate the labeled test images, leaked ones included (copy_of_0 is in the labels CSV).
    r = evaluate(m, test, tmp_path / "eval", labels, exclude_leaks=tmp_path / "audit")
    w = r.without_leaks
    assert w is not None and w.excluded == 1 and w.by_kind == {"exact": 1, "near": 0, "feature": 0}
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    leaked = {
        Path(row["path"]).name for row in csv.DictReader((tmp_path / "eval" / "leaked_images.csv").open())
    }
    assert leaked == {"copy_of_0.png"}
    correct = [row["true"] == row["pred"] for row in rows]
    kept = [c for row, c in zip(rows, correct, strict=True) if Path(row["path"]).name not in leaked]
    assert r.accuracy == pytest.approx(sum(correct) / len(correct))
    assert w.n == len(kept) == r.n - 1
    assert w.accuracy == pytest.approx(sum(kept) / len(kept))
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())["without_leaks"]
    assert saved["accuracy"] == pytest.approx(w.accuracy) and saved["excluded"] == 1
    # An audit that did not include the evaluated folder is refused before predicting.
    audit([train], tmp_path / "audit_train")
    with pytest.raises(AuditError, match="not"):
        evaluate(m, test, tmp_path / "eval2", labels, exclude_leaks=tmp_path / "audit_train")
    assert not (tmp_path / "eval2" / "metrics.json").exists()
