"""`cvtool train`: the command line over cvtool.train (torch imported inside).

Options left unset fall back to the `--recipe` and then to cvtool.train.config's defaults; the
resolved settings are printed and written to RUN/config.json. `--resume RUN` continues a run in
RUN with the run's own settings (a DATA given replaces the recorded data path); every other
option given is named in a warning as ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvtool.cli.common import CommandError, console, err_console, require_torch
from cvtool.cli.options import OptionError, label_options
from cvtool.data import LabelSource
from cvtool.errors import Interrupted
from cvtool.train.config import (
    AmpMode,
    ArchName,
    AugmentPreset,
    ClassWeights,
    FreezeMode,
    InitScheme,
    Monitor,
    OptimizerName,
    RecipeName,
    ScheduleName,
    TrainDevice,
)

_P = "Optimisation"
_A = "Augmentation (training images only)"
_T = "Transfer learning"
_H = "Hardware"
DEFAULT_OUT = Path("runs/train")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@label_options
def train(
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Images: DATA/<class>/<image>, or labeled by --labels CSV or --label-pattern "
            "(with --resume: replaces the recorded path)."
        ),
    ] = None,
    labels: LabelSource = LabelSource(),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help=f"Run folder to write (default: {DEFAULT_OUT}).")
    ] = None,
    recipe: Annotated[RecipeName | None, typer.Option(help="Named settings (measured results).")] = None,
    arch: Annotated[
        ArchName | None, typer.Option(help="Architecture (see --list-archs) (default: simple_cnn).")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout rate (default: the arch's).")] = None,
    init: Annotated[InitScheme | None, typer.Option(help="Weight initialisation (default: default).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="(default: 5)", rich_help_panel=_P)] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", min=1, help="Per process (default: 64).", rich_help_panel=_P),
    ] = None,
    optimizer: Annotated[
        OptimizerName | None, typer.Option(help="(default: adam)", rich_help_panel=_P)
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate (peak for onecycle) (default: 1e-3).", rich_help_panel=_P),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 penalty (decoupled for adamw) (default: 0).", rich_help_panel=_P)
    ] = None,
    momentum: Annotated[
        float | None, typer.Option(help="SGD momentum (Nesterov) (default: 0.9).", rich_help_panel=_P)
    ] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="(default: 0)", rich_help_panel=_P)] = None,
    class_weights: Annotated[
        ClassWeights | None, typer.Option(help="balanced: for imbalanced data.", rich_help_panel=_P)
    ] = None,
    schedule: Annotated[
        ScheduleName | None, typer.Option(help="LR schedule (default: none).", rich_help_panel=_P)
    ] = None,
    plateau_patience: Annotated[
        int | None,
        typer.Option(help="Epochs without improvement before the LR drops (default: 5).", rich_help_panel=_P),
    ] = None,
    plateau_factor: Annotated[
        float | None, typer.Option(help="LR multiplier on a plateau (default: 0.5).", rich_help_panel=_P)
    ] = None,
    step_size: Annotated[
        int | None, typer.Option(help="step schedule: epochs per decay (default: 10).", rich_help_panel=_P)
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping: epochs without improvement.", rich_help_panel=_P)
    ] = None,
    monitor: Annotated[
        Monitor | None,
        typer.Option(
            help="Picks best.pt, drives plateau and early stopping (default: val_acc).", rich_help_panel=_P
        ),
    ] = None,
    augment: Annotated[
        AugmentPreset | None, typer.Option(help="Preset (default: none).", rich_help_panel=_A)
    ] = None,
    hflip: Annotated[
        bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips.", rich_help_panel=_A)
    ] = None,
    rotate: Annotated[
        float | None, typer.Option(help="Random rotation, ± degrees.", rich_help_panel=_A)
    ] = None,
    translate: Annotated[
        float | None, typer.Option(help="Random shift, ± fraction of the size.", rich_help_panel=_A)
    ] = None,
    crop_scale: Annotated[
        float | None,
        typer.Option(help="Random-resized crop keeping ≥ this area fraction.", rich_help_panel=_A),
    ] = None,
    jitter: Annotated[
        float | None, typer.Option(help="Colour jitter strength (0.4: ±40 %).", rich_help_panel=_A)
    ] = None,
    random_gray: Annotated[
        float | None, typer.Option(help="Probability of a gray copy (RGB).", rich_help_panel=_A)
    ] = None,
    val_split: Annotated[
        float | None, typer.Option(help="Stratified validation fraction (default: 0.1).")
    ] = None,
    val_dir: Annotated[
        Path | None,
        typer.Option(help="Validation images instead of --val-split, labeled like DATA."),
    ] = None,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate",
            help="Fit a temperature on the validation split after training (calibrated probabilities).",
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="k-fold cross-validation: K runs in OUT/fold-<k>/, then OUT/oof.csv and OUT/cv.json.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    size: Annotated[
        int | None, typer.Option(min=1, help="Square input size (default: from the data).")
    ] = None,
    channels: Annotated[
        int | None, typer.Option(min=1, max=3, help="1 or 3 (default: from the data).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="DataLoader worker processes (default: CPUs - 1, at most 4)."),
    ] = None,
    subset: Annotated[int | None, typer.Option(min=1, help="Use at most N training images.")] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache", help="Keep decoded images in memory (small images) (default: no)."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="torchvision weight name (DEFAULT, IMAGENET1K_V1) or a state dict / checkpoint file.",
            rich_help_panel=_T,
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="cvtool checkpoint to fine-tune: its arch and weights, a fresh head for a new class set.",
            rich_help_panel=_T,
        ),
    ] = None,
    freeze: Annotated[
        FreezeMode | None, typer.Option(help="backbone: train the head only.", rich_help_panel=_T)
    ] = None,
    unfreeze_at: Annotated[
        int | None, typer.Option(help="Epoch from which the backbone trains too.", rich_help_panel=_T)
    ] = None,
    backbone_lr: Annotated[
        float | None,
        typer.Option(help="Backbone LR (default: lr/10 with --unfreeze-at, else lr).", rich_help_panel=_T),
    ] = None,
    device: Annotated[TrainDevice | None, typer.Option(help="(default: auto)", rich_help_panel=_H)] = None,
    amp: Annotated[
        AmpMode | None,
        typer.Option(
            help="Mixed precision: auto = bf16 where the CPU (AVX-512 BF16, AMX) or GPU has it, "
            "else off; fp16 on CUDA only (default: auto).",
            rich_help_panel=_H,
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last", help="(default: on for CUDA)", rich_help_panel=_H),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue a run exactly, in RUN: RUN/last.pt or RUN (settings are the run's own)."),
    ] = None,
    list_archs: Annotated[bool, typer.Option("--list-archs", help="List architectures and exit.")] = False,
) -> None:
    """Train a classifier on labeled images; writes best.pt, last.pt, metrics.csv, curves.png.

    Labels come from class folders (DATA/<class>/<image>), a CSV (--labels trainLabels.csv) or the
    file names (--label-pattern '^(cat|dog)\\.'), without moving a file.

    Runs unchanged under `torchrun --nproc_per_node N` (DistributedDataParallel; rank 0 writes).
    """
    require_torch()
    from cvtool.train.models import ARCHS

    if list_archs:
        for name, spec in sorted(ARCHS.items()):
            extras = [f"head: {spec.head}"] + (["torchvision weights"] if spec.torchvision else [])
            console.print(f"{name:11s} {spec.description}  [{'; '.join(extras)}]")
        raise typer.Exit(0)

    from cvtool.train.checkpoint import load_checkpoint
    from cvtool.train.config import resolve_config
    from cvtool.train.folds import cv_config, is_cv_run, train_folds
    from cvtool.train.loop import config_from_checkpoint
    from cvtool.train.loop import train as run_training

    settings = dict(
        arch=arch, dropout=dropout, init=init, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
        lr=lr, weight_decay=weight_decay, momentum=momentum, label_smoothing=label_smoothing,
        class_weights=class_weights, schedule=schedule, plateau_patience=plateau_patience,
        plateau_factor=plateau_factor, step_size=step_size, patience=patience, monitor=monitor,
        augment=augment, hflip=hflip, rotate=rotate, translate=translate, crop_scale=crop_scale,
        jitter=jitter, random_gray=random_gray, val_split=val_split,
        val_dir=None if val_dir is None else str(val_dir), seed=seed, size=size, channels=channels,
        workers=workers, subset=subset, cache=cache, weights=weights,
        init_from=None if init_from is None else str(init_from), freeze=freeze, unfreeze_at=unfreeze_at,
        backbone_lr=backbone_lr, device=device, amp=amp, channels_last=channels_last,
    )  # fmt: skip
    given_labels = labels if labels != LabelSource() else None
    settings.update(folds=folds, calibrate=calibrate)
    if resume is not None and is_cv_run(resume):
        # k-fold: the run's own settings; the first unfinished fold goes on, finished ones stay.
        cfg, state = cv_config(resume), None
        ignored = [_flag(k) for k, v in {"out": out, "recipe": recipe, **settings}.items() if v is not None]
        ignored += (["DATA"] if data is not None else []) + (["label options"] if given_labels else [])
        if ignored:
            err_console.print(
                f"warning: --resume of a k-fold run keeps its settings; ignoring {', '.join(ignored)}"
            )
    elif resume is not None:
        # Label options given on resume replace the recorded ones, as DATA does (same classes).
        cfg, state = config_from_checkpoint(resume, data, given_labels)
        if data is None and not Path(cfg.data).is_dir():
            raise OptionError(
                f"{cfg.data}, the run's data folder, is not there; give where it is now: "
                f"cvtool train DATA --resume {resume}"
            )
        if given_labels is None and cfg.labels_csv is not None and not Path(cfg.labels_csv).is_file():
            raise OptionError(
                f"{cfg.labels_csv}, the run's labels CSV, is not there; give where it is now: "
                f"cvtool train --resume {resume} --labels FILE.csv"
            )
        given = {"out": out, "recipe": recipe, **settings}
        ignored = [_flag(k) for k, v in given.items() if v is not None]
        if ignored:
            err_console.print(
                f"warning: --resume continues with the run's own settings in {cfg.out}; "
                f"ignoring {', '.join(ignored)}"
            )
    else:
        if data is None:
            raise OptionError("give the DATA folder to train on (or --resume RUN)")
        if init_from is not None and arch is not None:
            src_arch = load_checkpoint(init_from)["arch"]
            if src_arch != arch:
                raise OptionError(f"--init-from {init_from} is a {src_arch}; --arch {arch} contradicts it")
        given = {"data": str(data), "out": str(out or DEFAULT_OUT), **settings}
        given.update(
            labels_csv=None if labels.csv is None else str(labels.csv),
            id_col=labels.id_col,
            label_col=labels.label_col,
            label_pattern=labels.pattern,
        )
        cfg, state = resolve_config(given, recipe), None
    try:
        if cfg.folds:
            cv = train_folds(cfg, console.print, resume=resume is not None)
        else:
            result = run_training(cfg, log=console.print, resume=state)
    except KeyboardInterrupt as e:
        # Ctrl-C or SIGTERM: the last finished epoch's checkpoint is whole; say how to go on.
        code = e.exit_code if isinstance(e, Interrupted) else 130
        raise CommandError(f"interrupted; continue with: cvtool train --resume {cfg.out}", code) from None
    if cfg.folds:
        for f in cv.folds:
            console.print(
                f"fold {f.fold}: accuracy {f.accuracy:.4f}, log loss {f.log_loss:.4f} "
                f"on {f.n} held-out images"
            )
        (acc, acc_sd), (ll, ll_sd) = cv.mean_std("accuracy"), cv.mean_std("log_loss")
        console.print(
            f"{cfg.folds}-fold CV: accuracy {acc:.4f} ± {acc_sd:.4f}, log loss {ll:.4f} ± {ll_sd:.4f}; "
            f"out-of-fold predictions in {cfg.out}/oof.csv, scores in {cfg.out}/cv.json"
        )
        skipped = cv.skipped_images
    else:
        console.print(
            f"best val accuracy {result.best_val_acc:.4f} (epoch {result.best_epoch}); "
            f"checkpoints in {cfg.out}/"
        )
        skipped = result.skipped_images
    if skipped:
        err_console.print(
            f"{len(skipped)} training image(s) could not be read and were skipped:"
        )
        for line in skipped:
            err_console.print(f"  {line}")
        raise typer.Exit(1)
