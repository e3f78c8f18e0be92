"""Optimisers, learning-rate schedules and the loss, built from a TrainConfig.

Parameters are grouped into backbone and head (the head learns at `lr`, the backbone at
`backbone_lr` when fine-tuning), each split again so that biases and normalisation weights get
no weight decay (decaying a batch-norm scale only fights the normalisation).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from cvtool.train.config import TrainConfig
from cvtool.train.models import head_module

__all__ = ["build_optimizer", "LRSchedule", "build_loss", "head_lr"]


def build_optimizer(
    model: nn.Module, arch: str, cfg: TrainConfig, backbone_lr: float
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over the backbone/head × decay/no-decay groups.

    Every parameter is in a group even while frozen: a frozen parameter has no gradient, which
    every torch optimiser skips (weight decay included), and `--unfreeze-at` only has to set
    requires_grad again.
    """
    head_ids = {id(p) for p in head_module(model, arch).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        part = "head" if id(p) in head_ids else "backbone"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    param_groups = [
        {
            "params": params,
            "lr": cfg.lr if part == "head" else backbone_lr,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{part}{'' if decay else ' (no decay)'}",
        }
        for (part, decay), params in sorted(groups.items())
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def head_lr(optimizer: torch.optim.Optimizer) -> float:
    """The head's current learning rate (the one recorded in metrics.csv)."""
    for g in optimizer.param_groups:
        if g.get("name", "").startswith("head"):
            return float(g["lr"])
    return float(optimizer.param_groups[0]["lr"])


class LRSchedule:
    """One interface over torch's schedulers: call after_batch() per step, after_epoch() per epoch.

    plateau  ReduceLROnPlateau on the monitored metric: × plateau_factor after plateau_patience
             epochs without improvement (per epoch)
    cosine   cosine annealing to 0 over the whole run (per batch)
    onecycle one-cycle: warm up to lr over 30 % of the steps, anneal to lr / 25e4 (per batch)
    step     × step_gamma every step_size epochs (per epoch)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.name = cfg.schedule
        total = max(1, cfg.epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler
        self.scheduler: Any = None
        if self.name == "plateau":
            mode: Literal["min", "max"] = "min" if cfg.monitor == "val_loss" else "max"
            self.scheduler = sched.ReduceLROnPlateau(
                optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
        elif self.name == "cosine":
            self.scheduler = sched.CosineAnnealingLR(optimizer, T_max=total)
        elif self.name == "onecycle":
            max_lr = [g["lr"] for g in optimizer.param_groups]
            self.scheduler = sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
        elif self.name == "step":
            self.scheduler = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma)

    @property
    def per_batch(self) -> bool:
        return self.name in ("cosine", "onecycle")

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, metric: float) -> None:
        if self.name == "plateau":
            self.scheduler.step(metric)
        elif self.name == "step":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def build_loss(cfg: TrainConfig, class_weights: torch.Tensor | None) -> nn.Module:
    """Cross-entropy with optional label smoothing and per-class weights."""
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
