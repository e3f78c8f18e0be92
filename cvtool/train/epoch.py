"""One pass over a DataLoader: forward, loss, and (training) the optimiser step, with a progress bar.

A NaN or infinite loss stops the run with DivergedError before the step, so the last checkpoint
written is the last good one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader

from cvtool.train.config import TrainError
from cvtool.train.distributed import Runtime
from cvtool.train.optim import LRSchedule
from cvtool.train.transfer import freeze_bn_stats

__all__ = ["DivergedError", "EpochRunner"]


class DivergedError(TrainError, FloatingPointError):
    """The loss became NaN or infinite; the checkpoints of the last good epoch are kept."""


class EpochRunner:
    """What one pass over a loader needs; `run` trains when given an optimiser."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        rt: Runtime,
        progress: Progress,
        on_error: Callable[[str], None],
        amp: str,
        channels_last: bool,
    ):
        self.model, self.loss_fn, self.rt = model, loss_fn, rt
        self.progress, self.on_error = progress, on_error
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def run(
        self,
        loader: DataLoader,
        label: str,
        optimizer: torch.optim.Optimizer | None = None,
        schedule: LRSchedule | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> list[float]:
        """One pass → [loss sum, correct, images] for this rank; trains when given an optimiser."""
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
                    raise DivergedError(
                        f"loss became {loss.item()} in {label}; lower --lr (the last good checkpoint is kept)"
                    )
                if optimizer is not None:
                    assert schedule is not None and scaler is not None
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
