"""Checkpoints: written atomically, loaded with weights_only=True.

A checkpoint is a plain dict of tensors and builtins, so `torch.load(weights_only=True)` can read
it without unpickling arbitrary objects:

    format, version, arch, arch_kwargs (e.g. dropout), card (ModelCard.to_dict()), model
    (state_dict), epoch, metrics, config, frozen (names of parameters not training when saved),
    and for `--resume`: optimizer, scheduler, scaler, rng, history, tracker.

`deferred_interrupts` holds Ctrl-C and SIGTERM while a run writes its files: torch.save cut short
by an interrupt raises RuntimeError in place of it, and the run would end with a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvtool.atomic import atomic_write
from cvtool.contract import ModelCard
from cvtool.errors import CvtoolError
from cvtool.train.models import create_model

__all__ = [
    "CheckpointError",
    "deferred_interrupts",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]

FORMAT = "cvtool.checkpoint"
VERSION = 1


class CheckpointError(CvtoolError, ValueError):
    """A checkpoint file cannot be used; the message names it."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file, then rename: a kill mid-save keeps the previous file."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
    return path


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first one received.

    Python runs signal handlers in the main thread only, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    # getsignal is None for a handler installed outside Python: leave that one alone.
    previous = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not None}
    for s in previous:
        signal.signal(s, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])  # the restored handler runs now (raises, or ends the process)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a cvtool checkpoint (weights_only); CheckpointError names a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cvtool checkpoint")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than cvtool")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network and its card from a loaded checkpoint (eval mode, CPU)."""
    card = ModelCard.from_dict(ckpt["card"])
    kwargs = ckpt.get("arch_kwargs") or {}
    try:
        model = create_model(ckpt["arch"], card.num_classes, card.channels, card.input_size, **kwargs)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild the network: {e}") from e
    model.load_state_dict(ckpt["model"])
    return model.eval(), card
