"""`cvtool train`: the command line over cvtool.train (torch imported inside).

Options left unset fall back to the `--recipe` and then to cvtool.train.config's defaults; the
resolved settings are printed and written to RUN/config.json.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cvtool.cli.common import console, err_console, fail, require_torch

_P = "Optimisation"
_A = "Augmentation (training images only)"
_T = "Transfer learning"
_H = "Hardware"


def train(
    data: Path | None = typer.Argument(None, help="ImageFolder tree: DATA/<class>/<image>."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder to write."),
    recipe: str | None = typer.Option(None, help="Named settings: fashion-mnist, fashion-mnist-long."),
    arch: str | None = typer.Option(None, help="Architecture (see --list-archs) (default: simple_cnn)."),
    dropout: float | None = typer.Option(None, help="Dropout rate (default: the arch's)."),
    init: str | None = typer.Option(None, help="default, xavier, kaiming, normal or zeros."),
    epochs: int | None = typer.Option(None, min=1, help="(default: 5)", rich_help_panel=_P),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, help="Per process (default: 64).", rich_help_panel=_P
    ),
    optimizer: str | None = typer.Option(
        None, help="sgd, adam or adamw (default: adam).", rich_help_panel=_P
    ),
    lr: float | None = typer.Option(
        None, help="Learning rate (peak for onecycle) (default: 1e-3).", rich_help_panel=_P
    ),
    weight_decay: float | None = typer.Option(
        None, help="L2 penalty (decoupled for adamw) (default: 0).", rich_help_panel=_P
    ),
    momentum: float | None = typer.Option(
        None, help="SGD momentum (Nesterov) (default: 0.9).", rich_help_panel=_P
    ),
    label_smoothing: float | None = typer.Option(None, help="(default: 0)", rich_help_panel=_P),
    class_weights: str | None = typer.Option(
        None, help="none or balanced (imbalanced data).", rich_help_panel=_P
    ),
    schedule: str | None = typer.Option(
        None, help="none, plateau, cosine, onecycle or step.", rich_help_panel=_P
    ),
    plateau_patience: int | None = typer.Option(
        None, help="Epochs without improvement before the LR drops (default: 5).", rich_help_panel=_P
    ),
    plateau_factor: float | None = typer.Option(
        None, help="LR multiplier on a plateau (default: 0.5).", rich_help_panel=_P
    ),
    step_size: int | None = typer.Option(
        None, help="step schedule: epochs per decay (default: 10).", rich_help_panel=_P
    ),
    patience: int | None = typer.Option(
        None, help="Early stopping: epochs without improvement.", rich_help_panel=_P
    ),
    monitor: str | None = typer.Option(
        None,
        help="val_acc or val_loss: best.pt, plateau, early stopping (default: val_acc).",
        rich_help_panel=_P,
    ),
    augment: str | None = typer.Option(None, help="Preset: none, light or heavy.", rich_help_panel=_A),
    hflip: bool | None = typer.Option(
        None, "--hflip/--no-hflip", help="Random horizontal flips.", rich_help_panel=_A
    ),
    rotate: float | None = typer.Option(None, help="Random rotation, ± degrees.", rich_help_panel=_A),
    translate: float | None = typer.Option(
        None, help="Random shift, ± fraction of the size.", rich_help_panel=_A
    ),
    crop_scale: float | None = typer.Option(
        None, help="Random-resized crop keeping ≥ this area fraction.", rich_help_panel=_A
    ),
    jitter: float | None = typer.Option(
        None, help="Colour jitter strength (0.4: ±40 %).", rich_help_panel=_A
    ),
    random_gray: float | None = typer.Option(
        None, help="Probability of a gray copy (RGB).", rich_help_panel=_A
    ),
    val_split: float | None = typer.Option(None, help="Stratified validation fraction (default: 0.1)."),
    val_dir: Path | None = typer.Option(None, help="Validation ImageFolder tree instead of --val-split."),
    seed: int | None = typer.Option(None, help="(default: 0)"),
    size: int | None = typer.Option(None, help="Square input size (default: from the data)."),
    channels: int | None = typer.Option(None, help="1 or 3 (default: from the data)."),
    workers: int | None = typer.Option(
        None, help="DataLoader worker processes (default: CPUs - 1, at most 4)."
    ),
    subset: int | None = typer.Option(None, help="Use at most N training images."),
    cache: bool | None = typer.Option(
        None, "--cache/--no-cache", help="Keep decoded images in memory (small images) (default: no)."
    ),
    weights: str | None = typer.Option(
        None,
        help="torchvision weight name (DEFAULT, IMAGENET1K_V1) or a state dict / checkpoint file.",
        rich_help_panel=_T,
    ),
    init_from: Path | None = typer.Option(
        None,
        help="cvtool checkpoint to fine-tune: its arch and weights, a fresh head for a new class set.",
        rich_help_panel=_T,
    ),
    freeze: str | None = typer.Option(
        None, help="none or backbone (train the head only).", rich_help_panel=_T
    ),
    unfreeze_at: int | None = typer.Option(
        None, help="Epoch from which the backbone trains too.", rich_help_panel=_T
    ),
    backbone_lr: float | None = typer.Option(
        None, help="Backbone LR (default: lr/10 with --unfreeze-at, else lr).", rich_help_panel=_T
    ),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: auto).", rich_help_panel=_H),
    amp: str | None = typer.Option(
        None, help="off, bf16 or fp16 (CUDA only) mixed precision.", rich_help_panel=_H
    ),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="(default: on for CUDA)", rich_help_panel=_H
    ),
    resume: Path | None = typer.Option(
        None, help="Continue a run exactly: RUN/last.pt or RUN (settings are the run's own)."
    ),
    list_archs: bool = typer.Option(False, "--list-archs", help="List architectures and exit."),
) -> None:
    """Train a classifier on an ImageFolder tree; writes best.pt, last.pt, metrics.csv, curves.png.

    Runs unchanged under `torchrun --nproc_per_node N` (DistributedDataParallel; rank 0 writes).
    """
    require_torch()
    from cvtool.train.models import ARCHS

    if list_archs:
        for name, spec in sorted(ARCHS.items()):
            extras = [f"head: {spec.head}"] + (["torchvision weights"] if spec.torchvision else [])
            console.print(f"{name:11s} {spec.description}  [{'; '.join(extras)}]")
        raise typer.Exit(0)

    from cvtool.data import DataError
    from cvtool.train.checkpoint import CheckpointError, load_checkpoint
    from cvtool.train.config import resolve_config
    from cvtool.train.loop import config_from_checkpoint
    from cvtool.train.loop import train as run_training

    given = dict(
        data=None if data is None else str(data), out=str(out), arch=arch, dropout=dropout, init=init,
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        momentum=momentum, label_smoothing=label_smoothing, class_weights=class_weights, schedule=schedule,
        plateau_patience=plateau_patience, plateau_factor=plateau_factor, step_size=step_size,
        patience=patience, monitor=monitor, augment=augment, hflip=hflip, rotate=rotate, translate=translate,
        crop_scale=crop_scale, jitter=jitter, random_gray=random_gray, val_split=val_split,
        val_dir=None if val_dir is None else str(val_dir), seed=seed, size=size, channels=channels,
        workers=workers, subset=subset, cache=cache, weights=weights,
        init_from=None if init_from is None else str(init_from), freeze=freeze, unfreeze_at=unfreeze_at,
        backbone_lr=backbone_lr, device=device, amp=amp, channels_last=channels_last,
    )  # fmt: skip
    run_dir = resume if resume is not None else out
    try:
        if resume is not None:
            cfg, state = config_from_checkpoint(resume)
            ignored = sorted(k for k, v in given.items() if v is not None and k not in ("out", "data"))
            if ignored or recipe:
                err_console.print(
                    f"warning: --resume continues with the run's own settings; ignoring "
                    f"{', '.join('--' + k.replace('_', '-') for k in ignored) or '--recipe'}"
                )
        else:
            if data is None:
                raise fail("give the DATA folder to train on (or --resume RUN)")
            if init_from is not None and arch is not None:
                src_arch = load_checkpoint(init_from)["arch"]
                if src_arch != arch:
                    raise fail(f"--init-from {init_from} is a {src_arch}; --arch {arch} contradicts it")
            cfg, state = resolve_config(given, recipe), None
            if cfg.arch not in ARCHS:
                raise fail(f"unknown --arch {cfg.arch!r}; choose one of {', '.join(sorted(ARCHS))}")
        result = run_training(cfg, log=console.print, resume=state)
    except KeyboardInterrupt:
        raise fail(f"interrupted; continue with: cvtool train --resume {run_dir}", code=130) from None
    except (DataError, CheckpointError, ValueError, FloatingPointError) as e:
        raise fail(str(e)) from None
    console.print(
        f"best val accuracy {result['best_val_acc']:.4f} (epoch {result['best_epoch']}); "
        f"checkpoints in {cfg.out}/"
    )
    if result["skipped_images"]:
        err_console.print(
            f"{len(result['skipped_images'])} training image(s) could not be read and were skipped:"
        )
        for line in result["skipped_images"]:
            err_console.print(f"  {line}")
        raise typer.Exit(1)
