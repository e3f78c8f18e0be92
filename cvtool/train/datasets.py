"""Training data: image datasets, per-epoch seeded sampling, and the card inferred from the data.

Reproducibility: the sampler yields (epoch, index) pairs and the dataset seeds torch's RNG from
(seed, epoch, index) around each sample's augmentation. Shuffling and augmentation are therefore
a function of the seed and the epoch alone — the same with 0 or 8 workers, one process or a
torchrun group, and after `--resume`.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from cvtool.contract import ModelCard
from cvtool.images import ImageError, load_image, preprocess

__all__ = ["ImageDataset", "EpochSampler", "collate", "infer_card", "balanced_class_weights", "worker_init"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDataset(Dataset):
    """(epoch, i) → (array (C, H, W) float32 | None, label, error | None).

    A file that fails to decode yields None and the error text; `collate` drops it, so one bad
    image never ends a run.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        card: ModelCard,
        transform: Callable[[Image.Image], np.ndarray],
        seed: int = 0,
        random_transform: bool = False,
        cache: bool = False,
    ):
        self.paths, self.labels, self.card = list(paths), list(labels), card
        self.transform, self.seed, self.random_transform = transform, seed, random_transform
        # Decoded images (or the decode error) by index, kept after the first read: for data sets
        # of small images that fit in memory, decoding is then paid once instead of every epoch.
        # Each DataLoader worker fills its own copy.
        self._cache: dict[int, Image.Image | str] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int] | int):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        img = self._cache.get(i) if self._cache is not None else None
        if img is None:
            try:
                img = load_image(self.paths[i], self.card)
            except ImageError as e:
                img = str(e)
            if self._cache is not None:
                self._cache[i] = img
        if isinstance(img, str):
            return None, self.labels[i], img
        if self.random_transform:
            # torchvision draws from the global CPU generator: seed it for this sample, then put
            # its state back so the caller's stream (dropout, in a 0-worker loader) is untouched.
            # (torch.random.fork_rng does the same but costs ~60× more per call.)
            g = torch.default_generator
            state = g.get_state()
            g.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
            try:
                x = self.transform(img)
            finally:
                g.set_state(state)
        else:
            x = self.transform(img)
        return torch.from_numpy(x), self.labels[i], None


class EpochSampler(Sampler):
    """Indices for one rank of `world`, reshuffled per epoch from (seed, epoch), tagged with the epoch.

    Training (`pad=True`): every rank gets the same number of samples (the shuffled order is
    padded by wrapping around, as DistributedSampler does), so DistributedDataParallel steps stay
    in lockstep. Validation (`pad=False`): ranks split the data without duplicates.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1, pad: bool = True):
        self.n, self.shuffle, self.seed, self.rank, self.world, self.pad = n, shuffle, seed, rank, world, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        if self.pad and self.world > 1 and self.n % self.world:
            order += order[: self.world - self.n % self.world]
        return iter((self.epoch, i) for i in order[self.rank :: self.world])

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world)
        return len(range(self.rank, self.n, self.world))


def worker_init(_worker_id: int) -> None:
    """DataLoader worker set-up: SIGTERM ends the worker quietly, as SIGINT does.

    SLURM signals every process of a job. PyTorch's own handler lets a worker die of SIGTERM, and
    the main process then raises "DataLoader worker … is killed by signal" at whatever line it is
    on, in place of its own clean stop. A worker loop ends quietly on KeyboardInterrupt.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def collate(items):
    """Stack the decodable samples → (x (N, C, H, W) | None, y (N,) | None, [errors])."""
    ok = [(x, y) for x, y, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    if not ok:
        return None, None, errors
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok]), errors


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """n_samples / (n_classes · n_c) per class (scikit-learn's "balanced"); absent classes get 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def infer_card(
    paths: Sequence[Path],
    classes: Sequence[str],
    size: int | None,
    channels: int | None,
    seed: int,
    extra: dict | None = None,
    imagenet_stats: bool = False,
    sample: int = 1000,
) -> ModelCard:
    """Card from the data: channels, input size, and the training set's own mean/std.

    Small images of one size (MNIST 28², CIFAR 32²) are used as they are (stretch, a no-op);
    others get the ImageNet-style shorter-side resize + center crop at `size` (default 224).
    `imagenet_stats`: use ImageNet's mean/std instead (for torchvision's pretrained weights).
    """
    rng = random.Random(seed)
    probe = rng.sample(list(paths), min(len(paths), 64))
    sizes, gray = set(), True
    for p in probe:
        try:
            img = load_image(p)  # RGB
        except ImageError:
            continue
        sizes.add(img.size)
        a = np.asarray(img)
        gray = gray and bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
    channels = channels or (1 if gray else 3)
    if size is not None:
        input_size, resize = (size, size), "shorter_crop"
    elif len(sizes) == 1 and max(next(iter(sizes))) <= 64:
        w, h = next(iter(sizes))
        input_size, resize = (h, w), "stretch"
    else:
        input_size, resize = (224, 224), "shorter_crop"
    common: dict[str, Any] = dict(
        class_names=tuple(classes), channels=channels, input_size=input_size, resize=resize
    )
    if imagenet_stats and channels == 3:
        return ModelCard(**common, mean=IMAGENET_MEAN, std=IMAGENET_STD, extra=extra or {})
    provisional = ModelCard(**common, mean=(0.0,) * channels, std=(1.0,) * channels)
    # Per-channel mean/std of the (resized, scaled) training images, as users compute by hand
    # for MNIST (0.1307, 0.3081); accumulated in float64 for accuracy.
    s = np.zeros(channels)
    s2 = np.zeros(channels)
    n = 0
    for p in rng.sample(list(paths), min(len(paths), sample)):
        try:
            a = preprocess(load_image(p, provisional), provisional).astype(np.float64)
        except ImageError:
            continue
        s += a.sum(axis=(1, 2))
        s2 += (a * a).sum(axis=(1, 2))
        n += a.shape[1] * a.shape[2]
    mean = s / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 1e-12))
    return ModelCard(
        **common,
        mean=tuple(round(float(v), 4) for v in mean),
        std=tuple(round(float(v), 4) for v in std),
        extra=extra or {},
    )
