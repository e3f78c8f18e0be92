"""Training transforms end in the shared eval preprocessing; sampling and augmentation are a
function of (seed, epoch, index) alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_image_folder, shape_image

from cvtool.contract import ModelCard
from cvtool.data import scan_image_folder
from cvtool.images import preprocess
from cvtool.train.augment import Augment, EvalTransform, TrainTransform, resolve_augment
from cvtool.train.datasets import EpochSampler, ImageDataset

CARD = ModelCard(class_names=("a", "b"), channels=3, input_size=(32, 32), resize="stretch",
                 mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))  # fmt: skip
CROP = dataclasses.replace(CARD, resize="shorter_crop", input_size=(24, 24))


def seeded(transform, img, seed):
    torch.manual_seed(seed)
    return transform(img)


@pytest.mark.parametrize("card", [CARD, CROP])
def test_no_augmentation_is_exactly_the_eval_preprocessing(card):
    img = shape_image("circle", np.random.default_rng(0), size=45)
    expected = preprocess(img, card)
    np.testing.assert_array_equal(TrainTransform(card, Augment())(img), expected)
    np.testing.assert_array_equal(EvalTransform(card)(img), expected)


@pytest.mark.parametrize("card", [CARD, CROP])
def test_flip_is_the_mirror_of_the_eval_preprocessing(card):
    img = shape_image("square", np.random.default_rng(1), size=40)
    plain = preprocess(img, card)
    mirror = plain[:, :, ::-1]
    t = TrainTransform(card, Augment(hflip=True))
    outs = [seeded(t, img, s) for s in range(16)]
    flipped = [np.array_equal(o, mirror) for o in outs]
    kept = [np.array_equal(o, plain) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_affine_fills_uncovered_pixels_with_the_mean():
    img = shape_image("stripes", np.random.default_rng(2), size=32)
    t = TrainTransform(CARD, Augment(translate=0.3))
    out = seeded(t, img, 5)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    # A shift of up to 30 % leaves a band of fill; the fill is the mean, which normalises to ~0
    # (the mean is rounded to whole 8-bit levels: |error| ≤ 0.5/255 / std).
    border = np.concatenate([out[:, 0, :], out[:, -1, :], out[:, :, 0], out[:, :, -1]], axis=1)
    assert (np.abs(border) < 0.5 / 255 / 0.2 + 1e-6).mean(axis=1).max() > 0.2


def test_heavy_preset_output_shape_and_scale_for_rgb_and_gray():
    gray = dataclasses.replace(CROP, channels=1, mean=(0.5,), std=(0.25,))
    for card, mode in ((CROP, "RGB"), (gray, "L")):
        img = shape_image("circle", np.random.default_rng(3), size=50, mode=mode)
        t = TrainTransform(card, resolve_augment("heavy"))
        for s in range(5):
            out = seeded(t, img, s)
            assert out.shape == (card.channels, 24, 24)
            lo = (0 - max(card.mean)) / min(card.std)
            hi = (1 - min(card.mean)) / min(card.std)
            assert lo - 1e-5 <= out.min() and out.max() <= hi + 1e-5


def test_flags_override_the_preset():
    a = resolve_augment("heavy", hflip=False, rotate=5.0)
    assert (a.hflip, a.rotate, a.crop_scale, a.jitter) == (False, 5.0, 0.6, 0.4)
    assert resolve_augment("none") == Augment() and not Augment().active
    with pytest.raises(ValueError, match="unknown --augment"):
        resolve_augment("extreme")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("aug") / "d", per_class=5)


def test_dataset_augmentation_depends_on_seed_epoch_index_only(folder):
    s = scan_image_folder(folder)
    card = dataclasses.replace(CARD, class_names=tuple(s.classes))
    ds = ImageDataset(s.paths, s.labels, card, TrainTransform(card, resolve_augment("heavy")), 7, True)
    cached = ImageDataset(s.paths, s.labels, card, TrainTransform(card, resolve_augment("heavy")), 7, True,
                          cache=True)  # fmt: skip
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[(3, 4)][0]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    torch.manual_seed(999)  # whatever the global state, the sample is the same
    assert torch.equal(ds[(3, 4)][0], a) and torch.equal(cached[(3, 4)][0], a)
    assert torch.equal(cached[(3, 4)][0], a)  # from the cache
    assert not torch.equal(ds[(4, 4)][0], a)  # another epoch, another draw


def test_epoch_sampler_shards_and_reshuffles():
    n, world = 11, 3
    shards = [list(EpochSampler(n, True, seed=1, rank=r, world=world)) for r in range(world)]
    assert {len(s) for s in shards} == {4} and all(e == 0 for s in shards for e, _ in s)
    indices = [i for s in shards for _, i in s]
    assert set(indices) == set(range(n)) and len(indices) == 12  # padded by one repeat
    again = [list(EpochSampler(n, True, seed=1, rank=r, world=world)) for r in range(world)]
    assert again == shards
    s = EpochSampler(n, True, seed=1)
    first = [i for _, i in s]
    s.set_epoch(1)
    second = list(s)
    assert sorted(first) == list(range(n)) and [i for _, i in second] != first
    assert all(e == 1 for e, _ in second)
    val = [[i for _, i in EpochSampler(n, False, rank=r, world=world, pad=False)] for r in range(world)]
    assert sorted(i for v in val for i in v) == list(range(n))  # validation: no duplicates
    assert [len(EpochSampler(n, False, rank=r, world=world, pad=False)) for r in range(world)] == [4, 4, 3]
