"""The training loop: data → model → optimiser/schedule → epochs → checkpoints, metrics, curves.

Validation images go through the card's eval preprocessing (`cvtool.images`), the very code
predict and evaluate use, so validation accuracy is what the exported model will score.
Everything a run needs to continue exactly — model, optimiser, schedule, grad scaler, RNG states,
epoch, history, best-so-far — is in last.pt; `--resume` loads it and goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from cvtool.atomic import atomic_write_text
from cvtool.contract import ModelCard
from cvtool.data import scan_image_folder, stratified_split
from cvtool.train.augment import EvalTransform, TrainTransform, resolve_augment
from cvtool.train.checkpoint import load_checkpoint, save_checkpoint
from cvtool.train.config import TrainConfig
from cvtool.train.curves import plot_curves
from cvtool.train.datasets import EpochSampler, ImageDataset, balanced_class_weights, collate, infer_card
from cvtool.train.distributed import Runtime, setup
from cvtool.train.models import ARCHS, create_model
from cvtool.train.optim import LRSchedule, build_loss, build_optimizer, head_lr
from cvtool.train.state import Tracker, rng_state, seed_all, set_rng_state
from cvtool.train.transfer import freeze_bn_stats, load_matching, load_weights, set_backbone_trainable
from cvtool.train.weight_init import init_weights

__all__ = ["TrainConfig", "train", "config_from_checkpoint"]


def config_from_checkpoint(path: str | os.PathLike) -> tuple[TrainConfig, dict[str, Any]]:
    """(config, checkpoint) of a run to resume: RUN/last.pt, or the RUN folder itself."""
    path = Path(path)
    ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path)
    if "optimizer" not in ckpt or "rng" not in ckpt:
        raise ValueError(f"{path}: this checkpoint holds no optimiser/RNG state; resume from last.pt")
    return TrainConfig(**ckpt["config"]), ckpt


def _split(cfg: TrainConfig) -> tuple[list, list, list, list, list[str]]:
    """(train paths, train labels, val paths, val labels, classes) per --val-dir / --val-split / --subset."""
    samples = scan_image_folder(cfg.data)
    if len(samples.classes) < 2:
        raise ValueError(f"{cfg.data}: found {len(samples.classes)} class folder; need at least 2")
    if cfg.val_dir:
        val = scan_image_folder(cfg.val_dir, classes=samples.classes)
        train_idx, val_paths, val_labels = list(range(len(samples))), val.paths, val.labels
    else:
        train_idx, val_idx = stratified_split(samples.labels, cfg.val_split, cfg.seed)
        val_paths = [samples.paths[i] for i in val_idx]
        val_labels = [samples.labels[i] for i in val_idx]
    if cfg.subset is not None and cfg.subset < len(train_idx):
        train_idx = sorted(random.Random(cfg.seed).sample(train_idx, cfg.subset))
    train_paths = [samples.paths[i] for i in train_idx]
    train_labels = [samples.labels[i] for i in train_idx]
    return train_paths, train_labels, val_paths, val_labels, samples.classes


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class _Epoch:
    """What one pass over a loader needs; `run` trains when given an optimiser."""

    def __init__(
        self, model, loss_fn, rt: Runtime, progress: Progress, on_error, amp: str, channels_last: bool
    ):
        self.model, self.loss_fn, self.rt = model, loss_fn, rt
        self.progress, self.on_error = progress, on_error
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def run(self, loader: DataLoader, label: str, optimizer=None, schedule=None, scaler=None) -> list[float]:
        """One pass → [loss sum, correct, images] for this rank."""
        training = optimizer is not None
        self.model.train(training)
        if training:
            freeze_bn_stats(self.model)
        loss_sum, correct, seen = 0.0, 0, 0
        task = self.progress.add_task(label, total=len(loader), info="")
        t0 = time.perf_counter()
        dev = self.rt.device
        with torch.set_grad_enabled(training):
            for x, y, errors in loader:
                for err in errors:
                    self.on_error(err)
                if x is None:  # every image of the batch was unreadable
                    self.progress.advance(task)
                    continue
                x = x.to(dev, non_blocking=True, memory_format=self.memory_format)
                y = y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    logits = self.model(x)
                loss = self.loss_fn(logits.float(), y)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"loss became {loss.item()} in {label}; lower --lr (the last good checkpoint is kept)"
                    )
                if training:
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    schedule.after_batch()
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
                rate = seen / (time.perf_counter() - t0)
                self.progress.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}  {rate:.0f} img/s")
        self.progress.remove_task(task)
        return [loss_sum, correct, seen]


def train(
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train per `cfg` (continuing the checkpoint `resume` when given); files go to cfg.out.

    Writes best.pt (best `monitor`), last.pt, metrics.csv, curves.png, config.json, card.json.
    Under torchrun only rank 0 logs and writes. Returns the run's summary.
    """
    rt = setup(cfg.device)
    try:
        return _train(cfg, rt, log if rt.main else (lambda _: None), resume, on_epoch_end)
    finally:
        rt.close()


def _train(cfg: TrainConfig, rt: Runtime, log, resume, on_epoch_end) -> dict[str, Any]:
    if cfg.amp == "fp16" and rt.device.type != "cuda":
        raise ValueError(
            "--amp fp16 needs a CUDA device; on the CPU use bf16 (fast with AVX-512 BF16 or AMX)"
        )
    out = Path(cfg.out)
    seed_all(cfg.seed)
    train_paths, train_labels, val_paths, val_labels, classes = _split(cfg)

    source = load_checkpoint(cfg.init_from) if cfg.init_from and not resume else None
    arch = source["arch"] if source else cfg.arch
    arch_kwargs = dict((resume or source or {}).get("arch_kwargs") or {})
    if cfg.dropout is not None:
        arch_kwargs["dropout"] = cfg.dropout
    elif ARCHS[arch].dropout is not None:
        arch_kwargs.setdefault("dropout", ARCHS[arch].dropout)
    cfg = dataclasses.replace(cfg, arch=arch)
    if resume:
        card = ModelCard.from_dict(resume["card"])
    else:
        src_card = ModelCard.from_dict(source["card"]) if source else None
        named_tv_weights = bool(cfg.weights) and not Path(cfg.weights).is_file()
        card = infer_card(
            train_paths, classes, cfg.size, cfg.channels or (src_card.channels if src_card else None),
            cfg.seed, extra={"arch": arch}, imagenet_stats=named_tv_weights,
        )  # fmt: skip
    log(f"data: {len(train_paths)} train / {len(val_paths)} val images, {card.num_classes} classes")
    log(card.describe())

    model = init_weights(
        create_model(arch, card.num_classes, card.channels, card.input_size, **arch_kwargs), cfg.init
    )
    fresh: set[str] = set()
    if resume:
        model.load_state_dict(resume["model"])
        fresh = set(resume.get("fresh", []))
    elif cfg.weights:
        fresh = load_weights(model, arch, cfg.weights, log)
    elif source:
        same = tuple(ModelCard.from_dict(source["card"]).class_names) == card.class_names
        head = ARCHS[arch].head + "."
        _, kept = load_matching(model, source["model"], skip=lambda k: not same and k.startswith(head))
        fresh = {k.split(" ")[0] for k in kept}
        log(f"init from {cfg.init_from}: {arch}, " + ("same classes, head kept" if same else "fresh head"))
    start = resume["epoch"] + 1 if resume else 1
    if cfg.freeze == "backbone" and (cfg.unfreeze_at is None or start < cfg.unfreeze_at):
        n = set_backbone_trainable(model, arch, False, fresh)
        log(f"frozen: {n} backbone tensors" + (f" until epoch {cfg.unfreeze_at}" if cfg.unfreeze_at else ""))

    channels_last = cfg.channels_last if cfg.channels_last is not None else rt.device.type == "cuda"
    model.to(rt.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    backbone_lr = (
        cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr * (0.1 if cfg.unfreeze_at else 1.0)
    )
    optimizer = build_optimizer(model, arch, cfg, backbone_lr)
    n_params = sum(p.numel() for p in model.parameters())
    device_note = f"{rt.device}" + (
        f" ({torch.cuda.get_device_name(rt.device)})"
        if rt.device.type == "cuda"
        else f" ({torch.get_num_threads()} threads)"
    )
    log(
        f"model: {arch}, {n_params:,} parameters; device {device_note}"
        + (f", amp {cfg.amp}" if cfg.amp != "off" else "")
        + (", channels_last" if channels_last else "")
        + (f"; {rt.world} processes" if rt.distributed else "")
    )

    # Leave a core to the training threads: on 2 cores, 2 workers are ~10 % slower than 1.
    workers = cfg.workers if cfg.workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
    aug = resolve_augment(
        cfg.augment, cfg.hflip, cfg.rotate, cfg.translate, cfg.crop_scale, cfg.jitter, cfg.random_gray
    )

    def loader(paths, labels, training: bool) -> DataLoader:
        transform = TrainTransform(card, aug) if training else EvalTransform(card)
        ds = ImageDataset(
            paths,
            labels,
            card,
            transform,
            cfg.seed,
            random_transform=training and aug.active,
            cache=cfg.cache,
        )
        sampler = EpochSampler(
            len(ds), shuffle=training, seed=cfg.seed, rank=rt.rank, world=rt.world, pad=training
        )
        # Own generator: creating an iterator must not draw from the global RNG (exact resume).
        return DataLoader(
            ds,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator(),
            persistent_workers=workers > 0,
            pin_memory=rt.device.type == "cuda",
        )

    train_loader = loader(train_paths, train_labels, True)
    val_loader = loader(val_paths, val_labels, False)
    schedule = LRSchedule(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.amp == "fp16")
    weights = (
        balanced_class_weights(train_labels, card.num_classes) if cfg.class_weights == "balanced" else None
    )
    loss_fn = build_loss(cfg, None if weights is None else weights.to(rt.device))

    rows: list[dict[str, Any]] = []
    tracker = Tracker(cfg.monitor)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        rows, tracker = list(resume["history"]), Tracker(**resume["tracker"])
        set_rng_state(resume["rng"])
        log(f"resuming at epoch {start} of {cfg.epochs}")
    net = rt.wrap(model)
    if rt.main:
        atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
        atomic_write_text(out / "card.json", json.dumps(card.to_dict(), indent=2, ensure_ascii=False))

    bad_files: set[str] = set()

    def on_error(err: str) -> None:
        if err not in bad_files:
            bad_files.add(err)
            log(f"skipped unreadable training image: {err}")

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    stopped_early = False
    with Progress(*columns, TimeRemainingColumn(), transient=True, disable=not rt.main) as progress:
        epoch_runner = _Epoch(net, loss_fn, rt, progress, on_error, cfg.amp, channels_last)
        for epoch in range(start, cfg.epochs + 1):
            if cfg.freeze == "backbone" and cfg.unfreeze_at == epoch:
                set_backbone_trainable(model, arch, True)
                net = epoch_runner.model = rt.wrap(model)  # DDP must see the newly trainable tensors
                log(f"epoch {epoch}: backbone unfrozen (backbone lr {backbone_lr:g})")
            train_loader.sampler.set_epoch(epoch)
            lr = head_lr(optimizer)
            t0 = time.perf_counter()
            tr = epoch_runner.run(train_loader, f"epoch {epoch} train", optimizer, schedule, scaler)
            train_s = time.perf_counter() - t0
            va = epoch_runner.run(val_loader, f"epoch {epoch} val")
            tr_loss, tr_ok, tr_n, va_loss, va_ok, va_n = rt.sum(tr + va)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": round(tr_loss / max(tr_n, 1), 6),
                "train_acc": round(tr_ok / max(tr_n, 1), 6),
                "val_loss": round(va_loss / max(va_n, 1), 6),
                "val_acc": round(va_ok / max(va_n, 1), 6),
                "seconds": round(seconds, 2),
                "images_per_s": round(tr_n / train_s, 1),
            }
            rows.append(row)
            schedule.after_epoch(row[cfg.monitor])
            improved = tracker.update(epoch, row["val_loss"], row["val_acc"])
            if rt.main:
                state = {
                    "arch": arch,
                    "arch_kwargs": arch_kwargs,
                    "card": card.to_dict(),
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_state(),
                    "epoch": epoch,
                    "metrics": row,
                    "history": rows,
                    "tracker": asdict(tracker),
                    "config": asdict(cfg),
                    "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],
                    "fresh": sorted(fresh),
                }
                save_checkpoint(out / "last.pt", state)
                if improved:
                    save_checkpoint(out / "best.pt", state)
                _write_metrics(out / "metrics.csv", rows)
                plot_curves(rows, out / "curves.png", cfg.schedule)
            log(
                f"epoch {epoch}/{cfg.epochs}  lr {lr:.3g}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  "
                f"{seconds:.1f}s ({row['images_per_s']:.0f} img/s){'  *best' if improved else ''}"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if cfg.patience is not None and tracker.wait >= cfg.patience:
                log(
                    f"early stopping: {cfg.monitor} has not improved for {tracker.wait} epochs "
                    f"(best at epoch {tracker.best_epoch})"
                )
                stopped_early = True
                break
    rt.barrier()
    return {
        "best_val_acc": tracker.best_acc,
        "best_epoch": tracker.best_epoch,
        "epochs": rows,
        "stopped_early": stopped_early,
        "out": str(out),
        "device": str(rt.device),
        "skipped_images": sorted(bad_files),
    }
