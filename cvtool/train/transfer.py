"""Transfer learning: pretrained weights, frozen backbones, fine-tuning a checkpoint on new classes.

`--weights` takes a torchvision weight name (`DEFAULT`, `IMAGENET1K_V1`, `ResNet18_Weights.DEFAULT`,
resolved through torchvision's own registry and downloaded by torchvision) or a local file: a
plain state dict (what `torch.save(model.state_dict())` writes) or a cvtool checkpoint. Tensors
are matched by name; a tensor whose shape differs (the new head, a small-image stem) keeps its
fresh initialisation and is reported, except that a 3-channel first conv feeding a 1-channel
model is summed over its input channels (what a gray image would have produced).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

import torch
from torch import nn

from cvtool.errors import CvtoolError
from cvtool.train.models import ARCHS, head_module

__all__ = [
    "WeightsError",
    "read_state_dict",
    "load_matching",
    "load_weights",
    "set_backbone_trainable",
    "freeze_bn_stats",
]


class WeightsError(CvtoolError, ValueError):
    """Weights cannot be found, read, or matched to the network; the message says which."""


def _torchvision_state_dict(arch: str, name: str) -> dict[str, torch.Tensor]:
    tv_name = ARCHS[arch].torchvision
    if tv_name is None:
        raise WeightsError(
            f"--weights {name}: {arch} has no torchvision weights (archs with them: "
            f"{', '.join(a for a, s in sorted(ARCHS.items()) if s.torchvision)}); "
            f"pass a state dict file instead"
        )
    from torchvision.models import get_model_weights

    enum = get_model_weights(tv_name)
    prefix, _, member = name.rpartition(".")
    if (prefix and prefix != enum.__name__) or member not in enum.__members__:
        choices = ", ".join(f"{m} ({enum.__name__}.{m})" for m in enum.__members__)
        raise WeightsError(f"--weights {name}: not a file, nor a weight of {arch}; torchvision has {choices}")
    weights = enum[member]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, HTTPError, hash mismatch, …
        raise WeightsError(
            f"cannot download {weights} from {weights.url}: {e}; download the file where there is "
            f"internet and pass its path to --weights"
        ) from e


def read_state_dict(source: str | os.PathLike, arch: str) -> dict[str, torch.Tensor]:
    """The state dict named by `source`: a file (state dict or cvtool checkpoint) or a torchvision weight."""
    path = Path(source)
    if not path.is_file():
        if path.suffix in (".pt", ".pth", ".bin", ".ckpt") or os.sep in str(source):
            raise WeightsError(f"{path}: weights file not found")
        return _torchvision_state_dict(arch, str(source))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({str(e).splitlines()[0]})") from e
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):  # a cvtool checkpoint, a Lightning-style wrapper
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict (parameter name → tensor)")
    # Checkpoints saved from a DistributedDataParallel model prefix every name with "module.".
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_matching(
    model: nn.Module, state: Mapping[str, torch.Tensor], skip: Callable[[str], bool] = lambda k: False
) -> tuple[list[str], list[str]]:
    """Copy the tensors of `state` whose names and shapes match; returns (loaded, kept fresh)."""
    own = model.state_dict()
    merged, loaded, fresh = dict(own), [], []
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is None or skip(key):
            fresh.append(key)
        elif theirs.shape == mine.shape:
            merged[key] = theirs.to(mine.dtype)
            loaded.append(key)
        elif (
            theirs.ndim == 4
            and theirs.shape[1] == 3
            and mine.shape[1] == 1
            and (theirs.shape[0], *theirs.shape[2:]) == (mine.shape[0], *mine.shape[2:])
        ):
            merged[key] = theirs.sum(dim=1, keepdim=True).to(mine.dtype)
            loaded.append(key)
        else:
            fresh.append(f"{key} {tuple(theirs.shape)}→{tuple(mine.shape)}")
    if not any(k in state for k in own):
        raise WeightsError("no tensor names match the network; is it the same architecture?")
    model.load_state_dict(merged)
    return loaded, fresh


def load_weights(model: nn.Module, arch: str, source: str, log: Callable[[str], None]) -> set[str]:
    """--weights: load what matches; returns the names of parameters left freshly initialised."""
    state = read_state_dict(source, arch)
    try:
        loaded, fresh = load_matching(model, state)
    except WeightsError as e:
        raise WeightsError(f"--weights {source}: {e}") from None
    log(f"weights: {len(loaded)}/{len(loaded) + len(fresh)} tensors from {source}")
    if fresh:
        shown = ", ".join(fresh[:8]) + (f" … (+{len(fresh) - 8})" if len(fresh) > 8 else "")
        log(f"weights: kept fresh (absent or another shape): {shown}")
    return {k.split(" ")[0] for k in fresh}


def set_backbone_trainable(
    model: nn.Module, arch: str, trainable: bool, fresh: AbstractSet[str] = frozenset()
) -> int:
    """requires_grad for every non-head parameter (those in `fresh` always train); returns how many froze."""
    head_ids = {id(p) for p in head_module(model, arch).parameters()}
    frozen = 0
    for name, p in getattr(model, "module", model).named_parameters():
        if id(p) in head_ids:
            continue
        p.requires_grad_(trainable or name in fresh)
        frozen += not p.requires_grad
    return frozen


def freeze_bn_stats(model: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen stop updating their running statistics.

    Call after model.train(): a frozen backbone then computes exactly what the pretrained one did.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()
