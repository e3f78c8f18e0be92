"""Sessions, the decoding pipeline, TTA and ensembles, against straightforward references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers_predict import image_folder, linear_onnx, mirror_symmetric_image, noise_image

from cvtool.contract import ModelCard
from cvtool.decode import decode_batches, decode_only
from cvtool.images import ImageError, load_and_preprocess, load_image, preprocess
from cvtool.infer.ensemble import Ensemble, EnsembleError
from cvtool.infer.pipeline import predict_files, run_batches
from cvtool.infer.session import (
    DeviceError,
    _providers,
    cuda_status,
    default_batch_size,
    open_model,
    session_options,
    tensorrt_status,
)
from cvtool.softmax import softmax
from cvtool.timing import StageTimes
from cvtool.tta import num_views, views

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def lin(tmp_path_factory) -> Path:
    return linear_onnx(tmp_path_factory.mktemp("lin") / "lin.onnx", NAMES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = image_folder(tmp_path_factory.mktemp("imgs"), [str(i) for i in range(1, 24)])
    (root / "bad.png").write_bytes(b"not a png")
    return root


def _reference(model, paths):
    """One file at a time through session.run and numpy softmax: what the pipeline must equal."""
    out = {}
    for p in paths:
        try:
            x = load_and_preprocess(p, model.card)[None]
        except ImageError:
            continue
        (logits,) = model.session.run(None, {"input": x})
        out[p] = softmax(logits)[0]
    return out


def test_predict_files_equals_one_by_one(lin, folder):
    m = open_model(lin, device="cpu")
    paths = sorted(folder.iterdir())
    ref = _reference(m, paths)
    for batch, workers in ((1, 1), (5, 2), (64, 3)):
        preds = predict_files(m, paths, batch, workers)
        assert preds.paths == [p for p in paths if p in ref]  # input order kept
        np.testing.assert_allclose(preds.probs, np.stack([ref[p] for p in preds.paths]), rtol=1e-5, atol=1e-6)
        assert list(preds.failed) == [folder / "bad.png"]
        assert preds.provider == "CPUExecutionProvider"


def test_stage_times_account_for_the_run(lin, folder):
    m = open_model(lin, device="cpu")
    paths = sorted(folder.iterdir())
    preds = predict_files(m, paths, 4, 2)
    t = preds.times
    assert t.images == len(paths) and t.decode_threads == 2
    assert t.decode_cpu > 0 and t.decode_wall > 0 and t.model > 0
    # The model calls and the waits happen one after the other in the calling thread.
    assert t.model + t.waiting <= t.total
    assert t.total == preds.seconds
    line = t.describe()
    assert line.startswith(f"time {t.total:.2f} s") and f"model {t.model:.2f} s" in line
    assert "in 2 threads" in line


def test_stage_times_of_decode_only(lin, folder):
    card = open_model(lin, device="cpu").card
    times = StageTimes()
    n = decode_only(sorted(folder.iterdir()), [card], batch_size=5, workers=1, times=times)
    assert n == times.images == len(list(folder.iterdir()))
    assert times.decode_cpu > 0 and times.model == 0


def test_run_batches_consumes_a_lazy_iterator(lin, folder):
    m = open_model(lin, device="cpu")
    paths = sorted(folder.iterdir())
    taken = []

    def gen():
        for p in paths:
            taken.append(p)
            yield p

    it = run_batches(m, gen(), batch_size=4, workers=1)
    first = next(it)
    # Only the first batch and the bounded look-ahead (workers + 1 batches) have been read.
    assert len(first.paths) == 4 and len(taken) <= 4 * 3
    rest = list(it)
    assert sum(len(b.paths) for b in [first, *rest]) == len(paths)


def test_decode_helpers_match_preprocess(lin, folder):
    m = open_model(lin, device="cpu")
    paths = sorted(folder.iterdir())
    assert decode_only(paths, [m.card], batch_size=4, workers=2) == len(paths)
    got = [(p, x) for ps, xs, _ in decode_batches(paths, m.card, 4, 2) for p, x in zip(ps, xs, strict=True)]
    assert len(got) == len(paths) - 1
    for p, x in got[:5]:
        np.testing.assert_array_equal(x, load_and_preprocess(p, m.card))


def test_io_binding_path_equals_session_run(lin):
    """The CUDA path's IO binding code, run with the CPU device here (same ONNX Runtime API)."""
    m = open_model(lin, device="cpu")
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    plain = m.run(x)
    bound = dataclasses.replace(m, bind_device="cpu")
    np.testing.assert_allclose(bound.run(x), plain, rtol=1e-6)
    np.testing.assert_allclose(bound.run(x[:2]), plain[:2], rtol=1e-6)  # new shape, new buffer
    np.testing.assert_allclose(bound.run(x * 2), m.run(x * 2), rtol=1e-6)  # same buffer, new data


def test_padding_to_a_batch_size_keeps_results(lin):
    m = open_model(lin, device="cpu")
    x = np.random.default_rng(1).standard_normal((7, 3, 16, 16)).astype(np.float32)
    padded = dataclasses.replace(m, pad_to=4)
    np.testing.assert_allclose(padded.run(x), m.run(x), rtol=1e-6)


def test_session_options_and_batch_defaults():
    opts = session_options(threads=2)
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert default_batch_size("CPUExecutionProvider") == 32
    assert default_batch_size("CUDAExecutionProvider") > 32


@pytest.mark.skipif(cuda_status()[0], reason="CUDA is usable on this machine")
def test_strict_devices_refuse_and_auto_falls_back(lin):
    with pytest.raises(DeviceError, match="--device cuda: CUDA cannot be used: "):
        open_model(lin, device="cuda")
    with pytest.raises(DeviceError, match="--device tensorrt: TensorRT cannot be used: "):
        open_model(lin, device="tensorrt")
    assert _providers("auto") == ["CPUExecutionProvider"]
    assert open_model(lin, device="auto").provider == "CPUExecutionProvider"
    assert not tensorrt_status()[0]
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        _providers("gpu")


def test_gpu_provider_lists(monkeypatch):
    """What is asked of ONNX Runtime when CUDA is usable (checked without a GPU)."""
    import cvtool.infer.session as s

    monkeypatch.setattr(s, "cuda_status", lambda: (True, "1 CUDA device(s)"))
    monkeypatch.setattr(s, "tensorrt_status", lambda: (True, "1 CUDA device(s)"))
    assert s._providers("auto") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert s._providers("cuda", device_id=1)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    trt = s._providers("tensorrt", device_id=1)
    assert [p[0] if isinstance(p, tuple) else p for p in trt] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert trt[0][1]["device_id"] == 1 and trt[0][1]["trt_engine_cache_enable"]


# --- TTA -------------------------------------------------------------------------------------------


def test_tta_views(lin):
    card = open_model(lin, device="cpu").card
    img = noise_image(np.random.default_rng(3), 30, 22)
    base = preprocess(img, card)
    v = views(img, card, "flip")
    assert v.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(v[0], base)
    np.testing.assert_array_equal(v[1], base[:, :, ::-1])
    ten = views(img, card, "flip+crops")
    assert ten.shape == (num_views("flip+crops"), 3, 16, 16) == (10, 3, 16, 16)
    np.testing.assert_array_equal(ten[:2], v)
    # The corner crops differ from the center and from each other; each is followed by its mirror.
    crops = ten[2::2]
    assert len({c.tobytes() for c in crops} | {base.tobytes()}) == 5
    np.testing.assert_array_equal(ten[3::2], crops[:, :, :, ::-1])
    stretch = dataclasses.replace(card, resize="stretch")
    assert views(img, stretch, "flip+crops").shape == (10, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown TTA mode"):
        num_views("rotate")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"channels": 1, "mean": (0.3,), "std": (0.2,)},
        {"resize": "stretch", "input_size": (20, 12)},
        {"interpolation": "bicubic", "crop_pct": 0.6, "input_size": (9, 14)},
        {"scale": 1.0, "mean": (120.0, 110.0, 100.0), "std": (60.0, 61.0, 62.0), "interpolation": "nearest"},
    ],
)
def test_pipeline_views_are_bit_identical_to_preprocess(fields):
    """The pipeline's normalisation writes into the batch buffer; it must equal preprocess() exactly."""
    base = dict(class_names=NAMES, input_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    card = ModelCard(**{**base, **fields})
    rng = np.random.default_rng(11)
    for w, h in ((37, 23), (16, 16), (9, 40)):
        img = noise_image(rng, w, h, mode="L" if card.channels == 1 else "RGB")
        ref = preprocess(img, card)
        for mode in ("none", "flip", "flip+crops"):
            got = views(img, card, mode)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got[0], ref)


def test_tta_flip_on_a_symmetric_image_equals_no_tta(lin, tmp_path):
    m = open_model(lin, device="cpu")
    rng = np.random.default_rng(5)
    mirror_symmetric_image(rng, 32).save(tmp_path / "sym.png")
    noise_image(rng, 32, 32).save(tmp_path / "asym.png")
    paths = [tmp_path / "sym.png", tmp_path / "asym.png"]
    plain = predict_files(m, paths).probs
    flip = predict_files(m, paths, tta="flip").probs
    np.testing.assert_allclose(flip[0], plain[0], rtol=1e-5, atol=1e-7)
    # The model is not mirror-invariant: on the other image TTA changes the result, and is the mean
    # of the image's and its mirror's probabilities.
    assert not np.allclose(flip[1], plain[1], atol=1e-4)
    x = load_and_preprocess(paths[1], m.card)
    want = (m.run(x[None]) + m.run(x[None, :, :, ::-1].copy())) / 2
    np.testing.assert_allclose(flip[1], want[0], rtol=1e-5)


def test_tta_batches_count_views(lin, folder):
    m = open_model(lin, device="cpu")
    sizes = []
    m_run = m.run

    def spy(x, threads=None):
        sizes.append(len(x))
        return m_run(x, threads)

    m.run = spy
    list(run_batches(m, sorted(folder.iterdir())[:12], batch_size=20, workers=1, tta="flip+crops"))
    assert max(sizes) <= 20 and sizes[0] == 20  # 2 images × 10 views per call


# --- ensembles -------------------------------------------------------------------------------------


def test_ensemble_of_a_model_with_itself_equals_the_model(lin, folder):
    m = open_model(lin, device="cpu")
    paths = sorted(folder.iterdir())
    single = predict_files(m, paths)
    double = predict_files(Ensemble([m, open_model(lin, device="cpu")], [1, 3]), paths)
    np.testing.assert_allclose(double.probs, single.probs, rtol=1e-6, atol=1e-7)
    assert double.paths == single.paths and double.failed == single.failed


def test_ensemble_weights_and_class_order(tmp_path, folder):
    a = open_model(linear_onnx(tmp_path / "a.onnx", NAMES, seed=1), device="cpu")
    b = open_model(linear_onnx(tmp_path / "b.onnx", NAMES, seed=2), device="cpu")
    paths = sorted(folder.iterdir())[:6]
    pa, pb = predict_files(a, paths).probs, predict_files(b, paths).probs
    got = predict_files(Ensemble([a, b], [1, 3]), paths).probs
    np.testing.assert_allclose(got, 0.25 * pa + 0.75 * pb, rtol=1e-5)
    # The same model b with its classes listed in another order: columns are matched by name.
    names_c = ("c", "a", "b")
    c = open_model(linear_onnx(tmp_path / "c.onnx", names_c, seed=2), device="cpu")
    pc = predict_files(c, paths).probs
    got = predict_files(Ensemble([a, c]), paths).probs
    np.testing.assert_allclose(got, 0.5 * pa + 0.5 * pc[:, [1, 2, 0]], rtol=1e-5)


def test_ensemble_with_different_preprocessing(tmp_path, folder):
    """Each model gets its own card's input: a 1-channel 12×12 model next to a 3-channel 16×16 one."""
    a = open_model(linear_onnx(tmp_path / "a.onnx", NAMES, seed=1), device="cpu")
    g = open_model(linear_onnx(tmp_path / "g.onnx", NAMES, channels=1, size=12, seed=4), device="cpu")
    ens = Ensemble([a, g])
    assert len(ens.cards) == 2
    paths = sorted(folder.iterdir())[:5]
    want = 0.5 * predict_files(a, paths).probs + 0.5 * predict_files(g, paths).probs
    np.testing.assert_allclose(predict_files(ens, paths).probs, want, rtol=1e-5)
    same = Ensemble([a, open_model(tmp_path / "a.onnx", device="cpu")])
    assert len(same.cards) == 1  # identical preprocessing is decoded once


def test_ensemble_refuses_disagreeing_classes(tmp_path):
    a = open_model(linear_onnx(tmp_path / "a.onnx", NAMES), device="cpu")
    d = open_model(linear_onnx(tmp_path / "d.onnx", ("a", "b", "dog")), device="cpu")
    with pytest.raises(EnsembleError, match=r"name different classes.*\['c'\].*\['dog'\]"):
        Ensemble([a, d])
    with pytest.raises(EnsembleError, match="2 weight"):
        Ensemble([a], [1, 2])
    with pytest.raises(EnsembleError, match="≥ 0"):
        Ensemble([a, a], [1, -1])


def test_load_image_failure_is_reported_not_raised(lin, tmp_path):
    m = open_model(lin, device="cpu")
    (tmp_path / "empty.png").write_bytes(b"")
    noise_image(np.random.default_rng(0)).save(tmp_path / "ok.png")
    preds = predict_files(m, [tmp_path / "empty.png", tmp_path / "ok.png", tmp_path / "gone.png"])
    assert preds.paths == [tmp_path / "ok.png"]
    assert preds.failed == {tmp_path / "empty.png": "empty file", tmp_path / "gone.png": "file not found"}
    assert load_image(tmp_path / "ok.png").size == (24, 20)


def test_threads_for_follows_the_cost_per_file():
    from cvtool.decode import GIL_SECONDS_PER_FILE, threads_for

    assert threads_for(0.1e-3, 8) == 1  # a 28×28 PNG: Python's own work, GIL-bound
    assert threads_for(3e-3, 2) == 2  # a 500×375 JPEG: mostly in the decoder, capped by the cores
    assert threads_for(3e-3, 8) == 8
    assert threads_for(3.5 * GIL_SECONDS_PER_FILE, 8) == 3
    assert threads_for(0.0, 4) == 1


def test_adaptive_threads_decode_the_same_arrays(lin, folder, monkeypatch):
    import cvtool.decode as decode

    card = open_model(lin, device="cpu").card
    paths = sorted(folder.iterdir())

    def run(workers):
        times = StageTimes()
        out = [(c, [a.copy() for a in arrays], ok, failed) for c, arrays, ok, failed in decode.decoded(
            paths, [card], 4, workers, "none", times)]  # fmt: skip
        return out, times.decode_threads

    fixed, n = run(3)
    assert n == 3
    adaptive, n = run(None)
    assert n == 1  # these small PNGs cost far less than GIL_SECONDS_PER_FILE each
    monkeypatch.setattr(decode, "GIL_SECONDS_PER_FILE", 1e-12)
    many, n = run(None)
    assert n == decode.default_workers()
    for other in (adaptive, many):
        assert len(other) == len(fixed)
        for (c1, a1, ok1, f1), (c2, a2, ok2, f2) in zip(fixed, other, strict=True):
            assert c1 == c2 and ok1 == ok2 and f1 == f2
            np.testing.assert_array_equal(a1[0], a2[0])


def test_model_threads_leave_decoding_a_core_when_it_needs_most_of_one():
    from cvtool.infer.pipeline import DECODE_CORE_SHARE, model_threads

    # The demo model on 28×28 PNGs: decoding 0.1 ms per file, the model 0.12 core-ms per image.
    assert model_threads(0.1e-3, 0.12e-3, 2) == 1
    # ResNet-18 INT8 on photos: decoding 3 ms, the model 8.5 core-ms: decoding needs half a core.
    assert model_threads(3e-3, 8.5e-3, 2) == 2
    assert model_threads(3e-3, 24e-3, 2) == 2  # ResNet-18 fp32
    assert model_threads(1e-3, 0.0, 2) == 2 and model_threads(0.0, 1e-3, 4) == 4
    # On 16 cores decoding that needs 5.9 cores of them takes 6: the model keeps 10.
    d = 5.9 / 16
    assert model_threads(d, 1 - d, 16) == 10
    just_under = (DECODE_CORE_SHARE - 0.01) / 2
    assert model_threads(just_under, 1 - just_under, 2) == 2
    assert model_threads(1 - just_under, just_under, 2) == 1  # never below one thread


def test_retuned_threads_give_the_same_probabilities(lin, folder, monkeypatch):
    import cvtool.infer.pipeline as pipeline

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    monkeypatch.setattr(pipeline, "model_threads", lambda d, m, cores: 1)  # always retune
    m = open_model(lin, device="cpu")
    assert m.retunable and not open_model(lin, device="cpu", threads=2).retunable
    paths = sorted(folder.iterdir()) * 4
    fixed = predict_files(open_model(lin, device="cpu", threads=2), paths, 4, 2)
    tuned = predict_files(m, paths, 4, 2)
    assert tuned.times.model_threads == 1 and "(1 thread from the 4th batch on)" in tuned.times.describe()
    assert sorted(m._sessions_by_threads) == [1]  # the copy with one thread ran the rest
    assert tuned.paths == fixed.paths and list(tuned.failed) == list(fixed.failed)
    np.testing.assert_array_equal(tuned.probs, fixed.probs)


def test_the_first_batches_are_decoded_alone_when_retuning(lin, folder, monkeypatch):
    import cvtool.infer.pipeline as pipeline

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    m = open_model(lin, device="cpu")
    taken = []

    def gen():
        for p in sorted(folder.iterdir()):
            taken.append(p)
            yield p

    it = run_batches(m, gen(), batch_size=2, workers=2)
    for n in (1, 2, 3):  # nothing decodes ahead while the consumer holds one of the first three
        next(it)
        assert len(taken) == 2 * n
    next(it)
    assert len(taken) > 2 * 4  # then the look-ahead starts
