"""`--init`: weight initialisation schemes for conv and linear layers.

`default` keeps what each layer's constructor (or torchvision) chose. `zeros` is there to show
why it fails: every unit in a layer computes the same thing and gets the same gradient, so the
symmetry is never broken (and with ReLU the gradients are exactly zero). Batch-norm layers keep
weight 1, bias 0 under every scheme.
"""

from __future__ import annotations

from typing import get_args

from torch import nn

from cvtool.train.config import InitScheme, TrainError

__all__ = ["INIT_SCHEMES", "init_weights"]

INIT_SCHEMES: tuple[str, ...] = get_args(InitScheme)

NORMAL_STD = 0.01  # `normal`: N(0, 0.01²), the small-Gaussian init of the early ImageNet nets


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every Conv/Linear weight (biases to zero) per `scheme`; returns `model`."""
    if scheme not in INIT_SCHEMES:
        raise TrainError(f"unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return model
    for m in model.modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        if scheme == "xavier":  # Glorot & Bengio 2010: variance 2 / (fan_in + fan_out)
            nn.init.xavier_uniform_(m.weight)
        elif scheme == "kaiming":  # He et al. 2015: variance 2 / fan_in, for ReLU networks
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif scheme == "normal":
            nn.init.normal_(m.weight, 0.0, NORMAL_STD)
        else:
            nn.init.zeros_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
