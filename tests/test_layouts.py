"""Kaggle's data layouts: a flat folder + labels CSV (CIFAR-10's trainLabels.csv) and labels in the
file names (Dogs vs. Cats), read by cvtool.data.labeled_files for train, evaluate, occlusion and
predict --files, without moving a file; what does not match is counted and named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CLASSES, make_flat_test, shape_image
from helpers_predict import linear_onnx, touch_files
from typer.testing import CliRunner

from cvtool.cli import app
from cvtool.contract import CARD_METADATA_KEY, ModelCard
from cvtool.data import DataError, LabelSource, labeled_files, true_labels

runner = CliRunner()
TINY = ["--arch", "mlp", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--lr", "3e-3"]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def cifar_like(root: Path, per_class: int, seed: int = 0) -> tuple[Path, Path]:
    """CIFAR-10's layout: train/<n>.png (classes shuffled) and trainLabels.csv (id,label)."""
    rng = np.random.default_rng(seed)
    folder = root / "train"
    folder.mkdir(parents=True)
    kinds = list(np.array(CLASSES).repeat(per_class)[rng.permutation(per_class * len(CLASSES))])
    for n, kind in enumerate(kinds, start=1):
        shape_image(kind, rng).save(folder / f"{n}.png")
    rows = [[n, kind] for n, kind in enumerate(kinds, start=1)]
    return folder, _write_csv(root / "trainLabels.csv", ["id", "label"], rows)


def dogs_vs_cats_like(root: Path, per_class: int, seed: int = 0) -> Path:
    """Dogs vs. Cats' layout: train/<class>.<n>.png, the label only in the name."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for kind in CLASSES:
        for n in range(per_class):
            shape_image(kind, rng).save(root / f"{kind}.{n}.png")
    return root


# --- labeled_files: the one reader of the three layouts ------------------------------------------


def test_csv_layout_counts_and_names_what_does_not_match(tmp_path: Path):
    flat = touch_files(tmp_path / "train", "1.png", "2.png", "3.png", "10.png", "stray.png")
    labels = _write_csv(
        tmp_path / "trainLabels.csv",
        ["id", "label"],
        [[1, "cat"], [2, "dog"], [3, "cat"], [10, "dog"], [99, "cat"], [2, "dog"], [3, "dog"]],
    )
    s = labeled_files(flat, None, LabelSource(csv=labels))
    assert [p.name for p in s.paths] == ["1.png", "2.png", "3.png", "10.png"]
    assert s.classes == ["cat", "dog"] and s.labels == [0, 1, 0, 1]
    assert s.skipped == {
        "duplicate ids, same label": 1,
        "duplicate ids with another label (first row kept)": 1,
        "image files without a label": 1,
        "ids without an image file": 1,
    }
    assert s.examples["image files without a label"] == ["stray.png"]
    assert s.examples["ids without an image file"] == ["99"]
    assert s.origin == {"layout": "csv", "file": str(labels), "id_col": "id", "label_col": "label"}
    assert "ids without an image file: 1 (e.g. 99)" in s.notes()
    assert s.describe().startswith("4 labeled images, 2 classes, labels from")


def test_csv_string_ids_names_and_paths_in_sub_folders(tmp_path: Path):
    # Ids name files by stem, by name, or by path; sub-folders are read (HAM10000 ships two).
    root = touch_files(
        tmp_path / "imgs", "part1/ISIC_1.jpg", "part2/ISIC_2.jpg", "a.png", "x/b.png", "y/b.png"
    )
    labels = _write_csv(
        tmp_path / "meta.csv",
        ["image_id", "dx"],
        [["ISIC_1", "nv"], ["ISIC_2.jpg", "mel"], ["a", "nv"], ["b", "mel"]],
    )
    s = labeled_files(root, None, labels)
    rel = [p.relative_to(root).as_posix() for p in s.paths]
    assert rel == ["a.png", "part1/ISIC_1.jpg", "part2/ISIC_2.jpg", "x/b.png", "y/b.png"]
    assert [s.classes[y] for y in s.labels] == ["nv", "nv", "mel", "mel", "mel"]
    # One id, two files: both are labeled, and that is said.
    assert s.skipped == {"ids naming several image files (each labeled)": 1}
    assert s.examples == {"ids naming several image files (each labeled)": ["b"]}
    # A path id picks one of them.
    labels2 = _write_csv(tmp_path / "m2.csv", ["id", "label"], [["x/b", "mel"], ["y/b.png", "nv"]])
    s = labeled_files(root, None, labels2)
    assert [
        (p.relative_to(root).as_posix(), s.classes[y]) for p, y in zip(s.paths, s.labels, strict=True)
    ] == [
        ("x/b.png", "mel"),
        ("y/b.png", "nv"),
    ]


def test_integer_labels_are_class_names_in_natural_order(tmp_path: Path):
    flat = touch_files(tmp_path / "f", *(f"{i}.png" for i in range(1, 7)))
    labels = _write_csv(
        tmp_path / "l.csv", ["id", "label"], [[i, v] for i, v in enumerate([10, 2, 1, 2, 10, 1], 1)]
    )
    s = labeled_files(flat, None, labels)
    assert s.classes == ["1", "2", "10"]  # not "1", "10", "2"
    assert [s.classes[y] for y in s.labels] == ["10", "2", "1", "2", "10", "1"]
    # Against a model's classes (evaluate): a label that is not one is an error naming the first few.
    with pytest.raises(
        DataError, match=r"l\.csv: label\(s\) \['1', '2', '10'\] are not classes of the model"
    ):
        labeled_files(flat, ["cat", "dog"], labels)
    s = labeled_files(flat, ["10", "2", "1", "0"], labels)
    assert s.classes == ["10", "2", "1", "0"] and s.labels == [0, 1, 2, 1, 0, 2]


def test_other_column_names(tmp_path: Path):
    flat = touch_files(tmp_path / "f", "a.png", "b.png")
    labels = _write_csv(
        tmp_path / "l.csv", ["split", "Class", "ImageId"], [["tr", "x", "a"], ["tr", "y", "b"]]
    )
    s = labeled_files(flat, None, LabelSource(csv=labels, id_col="ImageId", label_col="Class"))
    assert [p.name for p in s.paths] == ["a.png", "b.png"] and s.classes == ["x", "y"]
    assert s.origin["id_col"] == "ImageId" and s.origin["label_col"] == "Class"
    with pytest.raises(DataError, match=r"no column 'id' \(--id-col\); the header is: split,Class,ImageId"):
        labeled_files(flat, None, LabelSource(csv=labels, id_col="id"))


def test_pattern_layout(tmp_path: Path):
    root = touch_files(
        tmp_path / "train", "cat.0.jpg", "cat.10.jpg", "cat.2.jpg", "dog.0.jpg", "README.png", "mouse.1.png"
    )
    s = labeled_files(root, None, LabelSource(pattern=r"^(cat|dog)\."))
    assert [p.name for p in s.paths] == ["cat.0.jpg", "cat.2.jpg", "cat.10.jpg", "dog.0.jpg"]
    assert s.classes == ["cat", "dog"] and s.labels == [0, 0, 0, 1]
    assert s.skipped == {"file names not matching the pattern": 2}
    assert s.examples == {"file names not matching the pattern": ["mouse.1.png", "README.png"]}
    assert s.origin == {"layout": "pattern", "pattern": r"^(cat|dog)\."}
    with pytest.raises(DataError, match=r"no file name matches --label-pattern '\^\(bird\)'"):
        labeled_files(root, None, LabelSource(pattern="^(bird)"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pattern="^cat"), "has no group: put the class in parentheses"),
        (dict(pattern="^(cat"), "not a valid regular expression"),
        (dict(csv=Path("l.csv"), pattern="(x)"), "--labels and --label-pattern are alternatives"),
        (dict(id_col="id"), "give --labels FILE.csv too"),
    ],
)
def test_label_source_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        LabelSource(**kwargs)


def test_true_labels_for_given_files(tmp_path: Path):
    names = ["cat", "dog"]
    files = [tmp_path / "cat.1.png", tmp_path / "dog.7.png"]
    assert true_labels(files, LabelSource(pattern=r"^(\w+)\."), names) == [0, 1]
    labels = _write_csv(tmp_path / "l.csv", ["id", "label"], [["cat.1", "dog"], ["dog.7.png", "cat"]])
    assert true_labels(files, LabelSource(csv=labels), names) == [1, 0]
    with pytest.raises(DataError, match=r"no known class by --label-pattern .* for 1 image\(s\)") as e:
        true_labels(files, LabelSource(pattern=r"^(\w+)\."), ["cat"])
    assert str(e.value).endswith("dog.7.png ('dog' is not a class)")


# --- the command line --------------------------------------------------------------------------


def test_label_option_contradictions_are_one_line_errors(tmp_path: Path):
    folder = touch_files(tmp_path / "f", "a.png")
    for args, message in [
        (["--labels", "x.csv", "--label-pattern", "(a)"], "--labels and --label-pattern are alternatives"),
        (["--id-col", "id"], "--id-col and --label-col name columns of a CSV"),
        (["--label-pattern", "a"], "has no group"),
        (["--label-pattern", "(a"], "not a valid regular expression"),
    ]:
        for command in (
            ["train", str(folder), "--out", str(tmp_path / "r")],
            ["data", "split", str(folder), str(tmp_path / "o")],
        ):
            r = runner.invoke(app, [*command, *args])
            assert r.exit_code == 2, (command, args, r.output)
            assert message in r.output and "Traceback" not in r.output
            assert len(r.output.strip().splitlines()) == 1


def test_train_on_a_csv_layout_records_it_and_resumes_with_it(tmp_path: Path):
    """String ids, other column names, an id without a file and a file without a label."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for kind in CLASSES:
        for n in range(8):
            shape_image(kind, rng).save(folder / f"{kind[:2]}_{n}.png")
            rows.append([f"{kind[:2]}_{n}", "x", kind])
    shape_image("circle", rng).save(folder / "stray.png")
    labels = _write_csv(tmp_path / "meta.csv", ["image", "source", "kind"], [*rows, ["ghost", "x", "circle"]])
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "train",
            str(folder),
            "--labels",
            str(labels),
            "--id-col",
            "image",
            "--label-col",
            "kind",
            *TINY,
            "--out",
            str(run),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "ids without an image file: 1 (e.g. ghost)" in r.output
    assert "image files without a label: 1 (e.g. stray.png)" in r.output
    assert "data: 21 train / 3 val images, 3 classes" in r.output  # 24 labeled; 10 % of 8 → 1 a class
    config = json.loads((run / "config.json").read_text())
    assert (config["labels_csv"], config["id_col"], config["label_col"]) == (str(labels), "image", "kind")
    card = json.loads((run / "card.json").read_text())
    assert card["class_names"] == list(CLASSES)
    assert card["extra"]["labels"] == {
        "layout": "csv",
        "file": str(labels),
        "id_col": "image",
        "label_col": "kind",
    }
    # --resume reads the same layout (a flat folder has no class folders to fall back on).
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert "ids without an image file: 1 (e.g. ghost)" in r.output
    # The CSV moved: say so, and how to give its new place.
    moved = labels.rename(tmp_path / "moved.csv")
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 2 and "the run's labels CSV, is not there" in r.output
    r = runner.invoke(app, ["train", "--resume", str(run), "--labels", str(moved)])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["labels_csv"] == str(moved)


def test_training_refuses_an_empty_intersection(tmp_path: Path):
    folder = touch_files(tmp_path / "f", "1.png", "2.png")
    labels = _write_csv(tmp_path / "l.csv", ["id", "label"], [["a", "x"], ["b", "y"]])
    r = runner.invoke(
        app, ["train", str(folder), "--labels", str(labels), *TINY, "--out", str(tmp_path / "r")]
    )
    assert r.exit_code == 2
    assert (
        "no image file matches an id of" in r.output
        and "ids such as a, b; files such as 1.png, 2.png" in r.output
    )
    assert not (tmp_path / "r" / "last.pt").exists()


def _card(model: Path) -> ModelCard:
    """The card embedded in an ONNX file, read with the onnx package."""
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    return ModelCard.from_json(props[CARD_METADATA_KEY])


def _submission(path: Path) -> dict[str, str]:
    return {row["id"]: row["label"] for row in csv.DictReader(path.open())}


def _evaluate(data: Path, model: Path, out: Path, *labels: str) -> tuple[str, dict]:
    """Run `cvtool evaluate`; its output and metrics.json."""
    r = runner.invoke(app, ["evaluate", str(data), *labels, "-m", str(model), "-o", str(out), "--no-report"])
    assert r.exit_code == 0, r.output
    return r.output, json.loads((out / "metrics.json").read_text())


def test_cifar10_layout_end_to_end(tmp_path: Path):
    """Flat PNGs + trainLabels.csv → train → export → predict a flat test folder, evaluate it."""
    train_dir, train_labels = cifar_like(tmp_path / "cifar", per_class=16)
    test_dir, test_labels = make_flat_test(tmp_path / "cifar" / "test", per_class=4)
    run, model = tmp_path / "run", tmp_path / "model.onnx"
    r = runner.invoke(app, ["train", str(train_dir), "--labels", str(train_labels), *TINY, "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert f"48 labeled images, 3 classes, labels from {train_labels}" in r.output
    r = runner.invoke(app, ["export", str(run / "best.pt"), "-o", str(model)])
    assert r.exit_code == 0, r.output
    card = _card(model)
    assert card.class_names == CLASSES
    assert card.extra["labels"] == {
        "layout": "csv",
        "file": str(train_labels),
        "id_col": "id",
        "label_col": "label",
    }

    sub = tmp_path / "submission.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "-m", str(model), "-o", str(sub)])
    assert r.exit_code == 0, r.output
    rows = _submission(sub)
    assert sorted(rows, key=int) == [str(i) for i in range(1, 13)] and set(rows.values()) <= set(CLASSES)
    # The answer key as the list of files to predict: the same rows.
    listed = tmp_path / "listed.csv"
    r = runner.invoke(
        app, ["predict", str(test_dir), "-m", str(model), "--files", str(test_labels), "-o", str(listed)]
    )
    assert r.exit_code == 0, r.output
    assert _submission(listed) == rows

    _, metrics = _evaluate(test_dir, model, tmp_path / "eval", "--labels", str(test_labels))
    truth = {row["id"]: row["label"] for row in csv.DictReader(test_labels.open())}
    assert metrics["n"] == 12
    assert metrics["accuracy"] == pytest.approx(sum(rows[i] == truth[i] for i in rows) / 12)
    # The labels were the right ones: the model fits its own training images (chance: 1/3).
    _, metrics = _evaluate(train_dir, model, tmp_path / "eval_train", "--labels", str(train_labels))
    assert metrics["n"] == 48 and metrics["accuracy"] > 0.7


def test_dogs_vs_cats_layout_end_to_end(tmp_path: Path):
    """Labels in the file names: train → export → predict; evaluate a named test folder."""
    train_dir = dogs_vs_cats_like(tmp_path / "dvc" / "train", per_class=16)
    shape_image("circle", np.random.default_rng(9)).save(train_dir / "unknown.1.png")
    run, model = tmp_path / "run", tmp_path / "model.onnx"
    pattern = r"^(circle|square|stripes)\."
    r = runner.invoke(app, ["train", str(train_dir), "--label-pattern", pattern, *TINY, "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "file names not matching the pattern: 1 (e.g. unknown.1.png)" in r.output
    origin = {"layout": "pattern", "pattern": pattern}
    assert json.loads((run / "card.json").read_text())["extra"]["labels"] == origin
    r = runner.invoke(app, ["export", str(run / "best.pt"), "-o", str(model)])
    assert r.exit_code == 0, r.output
    assert _card(model).extra["labels"] == origin

    test_dir = dogs_vs_cats_like(tmp_path / "dvc" / "test", per_class=3, seed=5)
    sub = tmp_path / "submission.csv"
    r = runner.invoke(app, ["predict", str(test_dir), "-m", str(model), "-o", str(sub)])
    assert r.exit_code == 0, r.output
    rows = _submission(sub)
    assert len(rows) == 9 and set(rows.values()) <= set(CLASSES)
    _, metrics = _evaluate(test_dir, model, tmp_path / "eval", "--label-pattern", pattern)
    per_image = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert sorted(row["true"] for row in per_image) == sorted(CLASSES * 3)
    assert all(Path(row["path"]).name.startswith(row["true"] + ".") for row in per_image)
    assert metrics["accuracy"] == pytest.approx(
        sum(rows[Path(x["path"]).stem] == x["true"] for x in per_image) / 9
    )
    output, metrics = _evaluate(train_dir, model, tmp_path / "eval_train", "--label-pattern", pattern)
    assert "file names not matching the pattern: 1 (e.g. unknown.1.png)" in output
    assert metrics["n"] == 48 and metrics["accuracy"] > 0.7


def test_evaluate_shows_the_counts_and_refuses_labels_that_are_not_classes(tmp_path: Path):
    model = linear_onnx(tmp_path / "m.onnx", ["1", "2", "10"], size=8)
    rng = np.random.default_rng(0)
    folder = tmp_path / "test"
    folder.mkdir()
    for n in range(1, 5):
        shape_image("circle", rng, size=8).save(folder / f"{n}.png")
    labels = _write_csv(tmp_path / "l.csv", ["id", "label"], [[1, 1], [2, 10], [3, 2], [7, 2]])
    out = tmp_path / "eval"
    r = runner.invoke(
        app,
        ["evaluate", str(folder), "--labels", str(labels), "-m", str(model), "-o", str(out), "--no-report"],
    )
    assert r.exit_code == 0, r.output
    assert "ids without an image file: 1 (e.g. 7)" in r.output
    assert "image files without a label: 1 (e.g. 4.png)" in r.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3
    assert metrics["skipped_files"] == {"image files without a label": 1, "ids without an image file": 1}
    trues = {Path(row["path"]).name: row["true"] for row in csv.DictReader((out / "per_image.csv").open())}
    assert trues == {"1.png": "1", "2.png": "10", "3.png": "2"}
    bad = _write_csv(tmp_path / "bad.csv", ["id", "label"], [[1, "cat"], [2, 3]])
    r = runner.invoke(app, ["evaluate", str(folder), "--labels", str(bad), "-m", str(model), "-o", str(out)])
    assert r.exit_code == 2 and "label(s) ['3', 'cat'] are not classes of the model" in r.output


def test_occlusion_true_class_from_the_file_name_or_a_csv(tmp_path: Path):
    model = linear_onnx(tmp_path / "m.onnx", ["cat", "dog"], size=8)
    rng = np.random.default_rng(0)
    for name in ("cat.1.png", "dog.2.png"):
        shape_image("circle", rng, size=8).save(tmp_path / name)
    files = [str(tmp_path / "cat.1.png"), str(tmp_path / "dog.2.png")]
    base = [
        "occlusion",
        *files,
        "-m",
        str(model),
        "--window",
        "4",
        "--target",
        "true",
        "-o",
        str(tmp_path / "occ"),
    ]
    r = runner.invoke(app, [*base, "--label-pattern", r"^(\w+)\."])
    assert r.exit_code == 0, r.output
    assert "cat.1.png: p(cat)" in r.output and "dog.2.png: p(dog)" in r.output
    labels = _write_csv(tmp_path / "l.csv", ["file", "truth"], [["cat.1.png", "dog"], ["dog.2", "cat"]])
    r = runner.invoke(app, [*base, "--labels", str(labels), "--label-col", "truth", "--id-col", "file"])
    assert r.exit_code == 0, r.output
    assert "cat.1.png: p(dog)" in r.output and "dog.2.png: p(cat)" in r.output
