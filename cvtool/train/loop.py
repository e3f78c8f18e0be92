"""The training loop: ImageFolder data → seeded stratified split → Adam + cross-entropy → checkpoints.

Validation images go through the card's eval preprocessing (`cvtool.images`), the very code
predict and evaluate use, so validation accuracy is what the exported model will score.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ImageOps
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvtool.atomic import atomic_write_text
from cvtool.contract import ModelCard
from cvtool.data import scan_image_folder, stratified_split
from cvtool.images import ImageError, load_image, preprocess
from cvtool.train.checkpoint import save_checkpoint
from cvtool.train.models import create_model

__all__ = ["TrainConfig", "train", "infer_card"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "simple_cnn"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_split: float = 0.1
    seed: int = 0
    size: int | None = None  # square input side; None: from the data (small uniform images) or 224
    channels: int | None = None  # None: 1 when every sampled image is grayscale, else 3
    hflip: bool = False
    workers: int | None = None
    subset: int | None = None  # use at most this many training images (quick runs)


class ImageDataset(Dataset):
    """Files → (C, H, W) tensors via the card; a file that fails to decode yields None."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], card: ModelCard, hflip: bool):
        self.paths, self.labels, self.card, self.hflip = list(paths), list(labels), card, hflip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.paths[i], self.card)
        except ImageError as e:
            return None, self.labels[i], str(e)
        # torch's RNG: seeded per worker by the DataLoader, so flips are reproducible.
        if self.hflip and torch.rand(()) < 0.5:
            img = ImageOps.mirror(img)
        return torch.from_numpy(preprocess(img, self.card)), self.labels[i], None


def _collate(items):
    ok = [(x, y) for x, y, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    if not ok:
        return None, None, errors
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok]), errors


def infer_card(
    paths: Sequence[Path], classes: Sequence[str], cfg: TrainConfig, arch: str, sample: int = 1000
) -> ModelCard:
    """Card from the data: channels, input size, and the training set's own mean/std.

    Small images of one size (MNIST 28², CIFAR 32²) are used as they are (stretch, a no-op);
    others get the ImageNet-style shorter-side resize + center crop at `size` (default 224).
    """
    rng = random.Random(cfg.seed)
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
    channels = cfg.channels or (1 if gray else 3)
    if cfg.size is not None:
        input_size, resize = (cfg.size, cfg.size), "shorter_crop"
    elif len(sizes) == 1 and max(next(iter(sizes))) <= 64:
        w, h = next(iter(sizes))
        input_size, resize = (h, w), "stretch"
    else:
        input_size, resize = (224, 224), "shorter_crop"
    provisional = ModelCard(
        class_names=tuple(classes),
        channels=channels,
        input_size=input_size,
        resize=resize,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
    )
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
        class_names=tuple(classes),
        channels=channels,
        input_size=input_size,
        resize=resize,
        mean=tuple(round(float(v), 4) for v in mean),
        std=tuple(round(float(v), 4) for v in std),
        extra={"arch": arch},
    )


def _run_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    progress: Progress,
    label: str,
    on_error: Callable[[str], None],
) -> tuple[float, float, int]:
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy, images)."""
    training = optimizer is not None
    model.train(training)
    total_loss, correct, seen = 0.0, 0, 0
    task = progress.add_task(label, total=len(loader), info="")
    with torch.set_grad_enabled(training):
        for x, y, errors in loader:
            for err in errors:
                on_error(err)
            if x is None:
                progress.advance(task)
                continue
            logits = model(x)
            loss = loss_fn(logits, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss became {loss.item()} at {label}; lower --lr (the last good checkpoint is kept)"
                )
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            progress.update(task, advance=1, info=f"loss {total_loss / seen:.4f}")
    progress.remove_task(task)
    return total_loss / max(seen, 1), correct / max(seen, 1), seen


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train per `cfg`; writes best.pt, last.pt, metrics.csv, config.json, card.json to cfg.out."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    samples = scan_image_folder(cfg.data)
    if len(samples.classes) < 2:
        raise ValueError(f"{cfg.data}: found {len(samples.classes)} class folder; need at least 2")
    train_idx, val_idx = stratified_split(samples.labels, cfg.val_split, cfg.seed)
    if cfg.subset is not None and cfg.subset < len(train_idx):
        train_idx = sorted(random.Random(cfg.seed).sample(train_idx, cfg.subset))
    train_paths = [samples.paths[i] for i in train_idx]
    card = infer_card(train_paths, samples.classes, cfg, cfg.arch)
    log(f"data: {len(train_idx)} train / {len(val_idx)} val images, {card.num_classes} classes")
    log(card.describe())

    model = create_model(cfg.arch, card.num_classes, card.channels, card.input_size)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.arch}, {n_params:,} parameters, device cpu")

    workers = cfg.workers if cfg.workers is not None else min(2, os.cpu_count() or 1)
    g = torch.Generator().manual_seed(cfg.seed)

    def loader(idx: list[int], train_mode: bool) -> DataLoader:
        ds = ImageDataset(
            [samples.paths[i] for i in idx],
            [samples.labels[i] for i in idx],
            card,
            hflip=cfg.hflip and train_mode,
        )
        return DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=train_mode,
            num_workers=workers,
            collate_fn=_collate,
            generator=g,
            persistent_workers=workers > 0,
        )

    train_loader, val_loader = loader(train_idx, True), loader(val_idx, False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    atomic_write_text(out / "card.json", json.dumps(card.to_dict(), indent=2, ensure_ascii=False))

    bad_files: set[str] = set()

    def on_error(err: str) -> None:
        if err not in bad_files:
            bad_files.add(err)
            log(f"skipped unreadable training image: {err}")

    rows: list[dict[str, Any]] = []
    best_acc, best_loss = -1.0, math.inf
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, TimeRemainingColumn(), transient=True) as progress:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            tr_loss, tr_acc, n_seen = _run_epoch(
                model, train_loader, loss_fn, optimizer, progress, f"epoch {epoch} train", on_error
            )
            train_s = time.perf_counter() - t0
            va_loss, va_acc, _ = _run_epoch(
                model, val_loader, loss_fn, None, progress, f"epoch {epoch} val", on_error
            )
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": round(tr_loss, 6),
                "train_acc": round(tr_acc, 6),
                "val_loss": round(va_loss, 6),
                "val_acc": round(va_acc, 6),
                "seconds": round(seconds, 2),
                "images_per_s": round(n_seen / train_s, 1),
            }
            rows.append(row)
            _write_metrics(out / "metrics.csv", rows)
            state = {
                "arch": cfg.arch,
                "card": card.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "metrics": row,
                "config": asdict(cfg),
            }
            save_checkpoint(out / "last.pt", state)
            improved = va_acc > best_acc or (va_acc == best_acc and va_loss < best_loss)
            if improved:
                best_acc, best_loss = va_acc, va_loss
                save_checkpoint(out / "best.pt", state)
            log(
                f"epoch {epoch}/{cfg.epochs}  train loss {tr_loss:.4f} acc {tr_acc:.4f}  "
                f"val loss {va_loss:.4f} acc {va_acc:.4f}  {seconds:.1f}s "
                f"({row['images_per_s']:.0f} img/s){'  *best' if improved else ''}"
            )
    return {
        "best_val_acc": best_acc,
        "epochs": rows,
        "out": str(out),
        "skipped_images": sorted(bad_files),
    }
