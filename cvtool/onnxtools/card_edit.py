"""The model card inside an ONNX file: read it, write it, and set it on models from elsewhere.

The card is JSON under metadata_props["cvtool.card"]. `set_card` makes a model exported by another
tool (no card, a fixed batch, an input not called `input`) self-describing: the values given are
merged over any card already in the file (given values > the file's card > defaults), and checked
against the graph's input and output shapes before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from cvtool.contract import CARD_METADATA_KEY, CardError, ModelCard, resolve_card
from cvtool.onnxtools.model_file import OnnxFileError, graph_io, load_onnx, save_onnx

__all__ = ["card_for_model", "read_card", "remove_card", "set_card", "write_card"]


def read_card(model: onnx.ModelProto) -> ModelCard | None:
    """The file's card, or None when it has none; CardError when it is malformed."""
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return ModelCard.from_json(prop.value)
    return None


def remove_card(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the card entry from the model's metadata_props, in place; returns the model."""
    for prop in list(model.metadata_props):
        if prop.key == CARD_METADATA_KEY:
            model.metadata_props.remove(prop)
    return model


def write_card(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Set (or replace) the card entry in the model's metadata_props, in place; returns the model."""
    remove_card(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, card.to_json()
    return model


def card_for_model(
    model: onnx.ModelProto, overrides: Mapping[str, Any] | None = None, path: str | os.PathLike = "model"
) -> ModelCard:
    """Resolve the card for `model` (overrides > the file's card > defaults), checked against its graph.

    Raises OnnxFileError naming `path` when the graph is not an image classifier or disagrees with
    the card; the check is `resolve_card`'s, the same one predict and evaluate run at open_model
    (class count vs output size, channels, and the input height and width where they are fixed).
    """
    io = graph_io(model, path)
    try:
        return resolve_card(
            read_card(model),
            overrides,
            num_outputs=io.num_outputs,
            input_channels=io.channels,
            input_hw=io.hw,
        )
    except CardError as e:
        raise OnnxFileError(f"{path}: {e}") from e


def set_card(
    path: str | os.PathLike,
    overrides: Mapping[str, Any],
    out_path: str | os.PathLike | None = None,
) -> tuple[ModelCard, ModelCard | None]:
    """Write the resolved card into the ONNX file at `path` (or a copy at `out_path`).

    Returns (the card written, the card the file had or None). The graph itself is not touched;
    the file is replaced atomically.
    """
    path = Path(path)
    model = load_onnx(path)
    try:
        previous = read_card(model)
    except CardError:
        # An unreadable card is replaced as a whole by what was given (over defaults).
        previous = None
        remove_card(model)
    card = card_for_model(model, overrides, path)
    write_card(model, card)
    save_onnx(model, out_path if out_path is not None else path)
    return card, previous
