"""What a run carries from epoch to epoch besides the weights: best-so-far and the RNG states.

Both go into every checkpoint as tensors and builtins, so `torch.load(weights_only=True)` reads
them and `--resume` continues the random streams (dropout) exactly where they were.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Tracker", "seed_all", "rng_state", "set_rng_state"]


@dataclass
class Tracker:
    """Best value of the monitored metric so far, and epochs since it last improved.

    best.pt follows `monitor`, ties in accuracy going to the lower loss (common on small
    validation sets); early stopping counts epochs without a strict improvement of `monitor`.
    """

    monitor: str
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    wait: int = 0

    def update(self, epoch: int, val_loss: float, val_acc: float) -> bool:
        """Record an epoch; True when it is the new best (save best.pt)."""
        if self.monitor == "val_acc":
            strict = val_acc > self.best_acc
            best = strict or (val_acc == self.best_acc and val_loss < self.best_loss)
        else:
            strict = best = val_loss < self.best_loss
        self.wait = 0 if strict else self.wait + 1
        if best:
            self.best_acc, self.best_loss, self.best_epoch = val_acc, val_loss, epoch
        return best


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and builtins (weights_only-loadable)."""
    py = random.getstate()
    npy = np.random.get_state(legacy=True)
    assert isinstance(npy, tuple)  # legacy=True: the MT19937 tuple (the stubs also allow a dict)
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], torch.from_numpy(npy[1].astype(np.int64)), int(npy[2]), int(npy[3]), float(npy[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
