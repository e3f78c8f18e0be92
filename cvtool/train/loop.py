"""The training loop: data → model → optimiser/schedule → epochs → checkpoints, metrics, curves.

Validation images go through the card's eval preprocessing (`cvtool.images`), the very code
predict and evaluate use, so validation accuracy is what the exported model will score.
Everything a run needs to continue exactly — model, optimiser, schedule, grad scaler, RNG states,
epoch, history, best-so-far — is in last.pt; `--resume` loads it and goes on, in the folder it
was given (a copied run continues in the copy).

Ctrl-C and SIGTERM raise KeyboardInterrupt (`cvtool.errors.Interrupted`) out of `train`; the
checkpoint, metrics and curves of an epoch are written with interrupts held, so the run folder is
always that of a finished epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from cvtool.atomic import atomic_write_text
from cvtool.contract import ModelCard
from cvtool.data import LabelSource, labeled_files, stratified_kfold, stratified_split
from cvtool.evaluation.runs import write_run_record
from cvtool.train.amp import resolve_amp
from cvtool.train.augment import EvalTransform, TrainTransform, resolve_augment
from cvtool.train.checkpoint import CheckpointError, deferred_interrupts, load_checkpoint, save_checkpoint
from cvtool.train.config import TrainConfig, TrainError
from cvtool.train.curves import plot_curves
from cvtool.train.datasets import (
    EpochSampler,
    ImageDataset,
    balanced_class_weights,
    collate,
    infer_card,
    worker_init,
)
from cvtool.train.distributed import Runtime, setup
from cvtool.train.epoch import EpochRunner
from cvtool.train.models import ARCHS, create_model
from cvtool.train.optim import LRSchedule, build_loss, build_optimizer, head_lr
from cvtool.train.state import Tracker, rng_state, seed_all, set_rng_state
from cvtool.train.transfer import load_matching, load_weights, set_backbone_trainable
from cvtool.train.weight_init import init_weights

__all__ = ["TrainConfig", "TrainResult", "train", "config_from_checkpoint"]


@dataclass
class TrainResult:
    """What a finished run reached; its files are in `out`."""

    best_val_acc: float
    best_epoch: int
    epochs: list[dict[str, Any]]  # one metrics row per epoch, as in metrics.csv
    stopped_early: bool
    out: str
    device: str
    skipped_images: list[str] = field(default_factory=list)  # unreadable training images


def config_from_checkpoint(
    path: str | os.PathLike, data: str | os.PathLike | None = None, labels: LabelSource | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """(config, checkpoint) to resume RUN/last.pt or the RUN folder; the run continues in RUN.

    The output folder is the one given here, not the one recorded, so a copied run folder goes on
    in the copy. `data` replaces the recorded data path; `labels` the recorded label source (a CSV
    keeps the recorded column names unless it names others). train() checks the classes are the same.
    """
    path = Path(path)
    run = path if path.is_dir() else path.parent
    ckpt = load_checkpoint(run / "last.pt" if path.is_dir() else path)
    if "optimizer" not in ckpt or "rng" not in ckpt:
        raise CheckpointError(f"{path}: this checkpoint holds no optimiser/RNG state; resume from last.pt")
    settings = {**ckpt["config"], "out": str(run)}
    if data is not None:
        settings["data"] = str(data)
    if labels is not None and labels.csv is not None:
        # The CSV's new place; the recorded column names stay unless others are given.
        settings.update(labels_csv=str(labels.csv), label_pattern=None)
        settings.update({k: v for k, v in (("id_col", labels.id_col), ("label_col", labels.label_col)) if v})
    elif labels is not None and labels.pattern is not None:
        settings.update(labels_csv=None, id_col=None, label_col=None, label_pattern=labels.pattern)
    return TrainConfig(**settings), ckpt


def _split(
    cfg: TrainConfig, log: Callable[[str], None]
) -> tuple[list, list, list, list, list[str], dict[str, str]]:
    """(train paths, train labels, val paths, val labels, classes, where the labels came from) per
    the label source, --val-dir / --val-split / --subset; logs what did not match."""
    source = cfg.label_source()
    samples = labeled_files(cfg.data, None, source)
    log(f"labels: {samples.describe()}")
    for line in samples.notes():
        log(f"  {line}")
    if len(samples.classes) < 2:
        raise TrainError(f"{cfg.data}: {samples.describe()}; training needs at least 2 classes")
    if cfg.val_dir:
        val = labeled_files(cfg.val_dir, samples.classes, source)
        for line in val.notes():
            log(f"  --val-dir {line}")
        train_idx, val_paths, val_labels = list(range(len(samples))), val.paths, val.labels
    else:
        if cfg.fold is not None and cfg.folds is not None:  # a fold of k-fold: it validates on its own
            val_idx = stratified_kfold(samples.labels, cfg.folds, cfg.seed)[cfg.fold - 1]
            held = set(val_idx)
            train_idx = [i for i in range(len(samples)) if i not in held]
        else:
            train_idx, val_idx = stratified_split(samples.labels, cfg.val_split, cfg.seed)
        val_paths = [samples.paths[i] for i in val_idx]
        val_labels = [samples.labels[i] for i in val_idx]
    if cfg.subset is not None and cfg.subset < len(train_idx):
        train_idx = sorted(random.Random(cfg.seed).sample(train_idx, cfg.subset))
    train_paths = [samples.paths[i] for i in train_idx]
    train_labels = [samples.labels[i] for i in train_idx]
    return train_paths, train_labels, val_paths, val_labels, samples.classes, samples.origin


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def train(
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train per `cfg` (continuing the checkpoint `resume` when given); files go to cfg.out.

    Writes best.pt (best `monitor`), last.pt, metrics.csv, curves.png, config.json, card.json,
    and run.json (the summary `cvtool runs` lists; see cvtool.evaluation.runs).
    Under torchrun only rank 0 logs and writes.
    """
    rt = setup(cfg.device)
    try:
        return _train(cfg, rt, log if rt.main else (lambda _: None), resume, on_epoch_end)
    finally:
        rt.close()


def _train(
    cfg: TrainConfig,
    rt: Runtime,
    log: Callable[[str], None],
    resume: dict[str, Any] | None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
) -> TrainResult:
    amp, amp_why = resolve_amp(cfg.amp, rt.device)
    if amp == "fp16" and rt.device.type != "cuda":
        raise TrainError(
            "--amp fp16 needs a CUDA device; on the CPU use bf16 (fast with AVX-512 BF16 or AMX)"
        )
    out = Path(cfg.out)
    seed_all(cfg.seed)
    train_paths, train_labels, val_paths, val_labels, classes, origin = _split(cfg, log)

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
        if tuple(classes) != card.class_names:
            raise TrainError(
                f"{cfg.data} has the classes {', '.join(classes)}; the run to resume was trained on "
                f"{', '.join(card.class_names)}"
            )
    else:
        src_card = ModelCard.from_dict(source["card"]) if source else None
        named_tv_weights = bool(cfg.weights and not Path(cfg.weights).is_file())
        card = infer_card(
            train_paths, classes, cfg.size, cfg.channels or (src_card.channels if src_card else None),
            cfg.seed, extra={"arch": arch, "labels": origin}, imagenet_stats=named_tv_weights,
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
    model.to(rt.device)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
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
        + (f", amp {amp}" if amp != "off" or amp_why else "")
        + (f" ({amp_why})" if amp_why else "")
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
            worker_init_fn=worker_init,
            generator=torch.Generator(),
            persistent_workers=workers > 0,
            pin_memory=rt.device.type == "cuda",
        )

    train_loader = loader(train_paths, train_labels, True)
    train_sampler = train_loader.sampler
    assert isinstance(train_sampler, EpochSampler)
    val_loader = loader(val_paths, val_labels, False)
    schedule = LRSchedule(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=amp == "fp16")
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
        epoch_runner = EpochRunner(net, loss_fn, rt, progress, on_error, amp, channels_last)
        for epoch in range(start, cfg.epochs + 1):
            if cfg.freeze == "backbone" and cfg.unfreeze_at == epoch:
                set_backbone_trainable(model, arch, True)
                net = epoch_runner.model = rt.wrap(model)  # DDP must see the newly trainable tensors
                log(f"epoch {epoch}: backbone unfrozen (backbone lr {backbone_lr:g})")
            train_sampler.set_epoch(epoch)
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
            stop = cfg.patience is not None and tracker.wait >= cfg.patience
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
                # torch.save cut short by an interrupt raises RuntimeError instead of it: Ctrl-C
                # and SIGTERM wait until the epoch's files are written.
                with deferred_interrupts():
                    save_checkpoint(out / "last.pt", state)
                    if improved:
                        save_checkpoint(out / "best.pt", state)
                    _write_metrics(out / "metrics.csv", rows)
                    plot_curves(rows, out / "curves.png", cfg.schedule)
                    write_run_record(
                        out, arch=arch, parameters=n_params, history=rows, monitor=cfg.monitor,
                        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                        epochs_planned=cfg.epochs, finished=stop or epoch == cfg.epochs, stopped_early=stop,
                    )  # fmt: skip
            log(
                f"epoch {epoch}/{cfg.epochs}  lr {lr:.3g}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  "
                f"{seconds:.1f}s ({row['images_per_s']:.0f} img/s){'  *best' if improved else ''}"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if stop:
                log(
                    f"early stopping: {cfg.monitor} has not improved for {tracker.wait} epochs "
                    f"(best at epoch {tracker.best_epoch})"
                )
                stopped_early = True
                break
    if cfg.calibrate and rt.main:
        from cvtool.train.calibrate import calibrate_run

        with deferred_interrupts():
            cal = calibrate_run(out, val_paths, val_labels, rt.device)
        log(
            f"calibrated on {cal.n} validation images: temperature {cal.temperature:.4f}, log loss "
            f"{cal.nll_before:.4f} → {cal.nll_after:.4f}, ECE {cal.ece_before:.4f} → {cal.ece_after:.4f}"
            + (f" ({cal.note})" if cal.note else "")
        )
    rt.barrier()
    return TrainResult(
        best_val_acc=tracker.best_acc,
        best_epoch=tracker.best_epoch,
        epochs=rows,
        stopped_early=stopped_early,
        out=str(out),
        device=str(rt.device),
        skipped_images=sorted(bad_files),
    )
