"""The preprocessing and label contract that travels with a model.

A `ModelCard` says everything needed to turn an image file into the model's input tensor and the
model's output row into a class name. It is built once at training time, stored in the checkpoint,
written as JSON into the ONNX file's `metadata_props`, and read back by predict/evaluate.

Precedence when resolving the card used for a run: CLI overrides > the model file's card > defaults.

Standard library only: this module is imported everywhere, including where torch is absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from cvtool.errors import CvtoolError

__all__ = [
    "CARD_METADATA_KEY",
    "SCHEMA_VERSION",
    "CardError",
    "ModelCard",
    "check_card_fits_graph",
    "resolve_card",
]

# Key under which the card's JSON is stored in the ONNX file's metadata_props.
CARD_METADATA_KEY = "cvtool.card"
SCHEMA_VERSION = 1

ResizeMode = Literal["stretch", "shorter_crop"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)
OUTPUT_KINDS = ("logits", "probs")


class CardError(CvtoolError, ValueError):
    """A card is missing, malformed or inconsistent; the message says what to fix."""


@dataclass(frozen=True)
class ModelCard:
    """How to feed a model and read its output.

    Preprocessing, in order:

    1. decode; with `jpeg_draft` (the default) a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
       by the DCT, the smallest that stays at least twice the resize below (faster, slightly
       different pixels); `jpeg_draft=False` decodes every JPEG at full size, for exact parity
       with a full decode + resize (torchvision). EXIF orientation applied.
    2. convert to `channels` (1 = L, 3 = RGB).
    3. resize with `interpolation` (Pillow's filter). `stretch`: straight to `input_size`.
       `shorter_crop`: with input_size (h, w), the cover size is (H', W') = (floor(h / crop_pct),
       floor(w / crop_pct)). The image side whose cover/side ratio is larger "binds" (the height
       on a tie) and is resized to its cover size exactly; the other side becomes
       int(cover * other / binding), truncated, computed in that order, and never below its
       own cover size. For square sizes this is torchvision's Resize(floor(size / crop_pct)):
       shorter side → S, longer side → int(S * long / short).
    4. center-crop `input_size`, offsets round((resized - crop) / 2) (half to even), as
       torchvision's CenterCrop.
    5. float32: x / (1 / scale), - mean, / std per channel (torchvision's ToTensor + Normalize,
       in that order) → (C, H, W).

    Output: `logits` are turned into probabilities by a softmax; with `calibration` (temperature
    scaling, written by `cvtool calibrate`) the logits are divided by its `temperature` first.

    Serialisation: `jpeg_draft` is left out of the JSON while it is True, and `calibration` while
    it is None, so such cards stay readable by cvtool versions from before those fields;
    `from_dict` accepts them either way. A card that sets either is refused by those versions
    ("unknown fields"), as it should be, since they would decode or score differently.
    """

    class_names: tuple[str, ...]
    channels: int = 3
    input_size: tuple[int, int] = (224, 224)  # (height, width)
    resize: str = "shorter_crop"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    output: str = "logits"
    jpeg_draft: bool = True
    # {"method": "temperature", "temperature": T, and how it was fitted: fitted_on, n, nll_before,
    # nll_after, ece_before, ece_after}. Part of equality, not of the hash (a dict).
    calibration: Mapping[str, Any] | None = field(default=None, hash=False)
    schema_version: int = SCHEMA_VERSION
    # Free-form provenance (architecture, training run); never used for preprocessing.
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Normalise list inputs (from JSON or the CLI) to tuples so the card stays hashable-ish
        # and equality is by value.
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "extra", dict(self.extra))
        if self.calibration is not None:
            object.__setattr__(self, "calibration", dict(self.calibration))
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the softmax: 1 without calibration."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    def validate(self) -> None:
        """Raise CardError naming the first field that is wrong."""
        if self.schema_version > SCHEMA_VERSION:
            raise CardError(
                f"card schema_version {self.schema_version} is newer than this cvtool understands "
                f"({SCHEMA_VERSION}); upgrade cvtool"
            )
        if len(self.class_names) < 1:
            raise CardError("card has no class names")
        if len(set(self.class_names)) != len(self.class_names):
            raise CardError("card class names are not unique")
        if self.channels not in (1, 3):
            raise CardError(f"card channels must be 1 or 3, got {self.channels}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise CardError(f"card input_size must be (height, width) > 0, got {self.input_size}")
        if self.resize not in RESIZE_MODES:
            raise CardError(f"card resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise CardError(f"card crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise CardError(f"card interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels:
                raise CardError(
                    f"card {name} has {len(values)} values but the model has {self.channels} channels"
                )
        if any(s == 0 for s in self.std):
            raise CardError("card std must not contain 0")
        if self.output not in OUTPUT_KINDS:
            raise CardError(f"card output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if not isinstance(self.jpeg_draft, bool):
            raise CardError(f"card jpeg_draft must be true or false, got {self.jpeg_draft!r}")
        if self.calibration is not None:
            cal = self.calibration
            if cal.get("method") != "temperature":
                raise CardError(f"card calibration method must be 'temperature', got {cal.get('method')!r}")
            temperature = cal.get("temperature")
            if not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
                raise CardError(f"card calibration temperature must be positive, got {temperature!r}")
            if self.output != "logits":
                raise CardError("card calibration needs output 'logits' (a temperature divides logits)")

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        # Defaults are left out, so cvtool versions from before these fields read the card.
        if self.jpeg_draft:
            del d["jpeg_draft"]
        if self.calibration is None:
            del d["calibration"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CardError(f"card has unknown fields {unknown}")
        if "class_names" not in d:
            raise CardError("card has no class_names")
        try:
            return cls(**dict(d))
        except (TypeError, ValueError) as e:
            if isinstance(e, CardError):
                raise
            raise CardError(f"card is malformed: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CardError(f"card is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise CardError("card JSON is not an object")
        return cls.from_dict(d)

    def describe(self) -> str:
        """A few human-readable lines, for --verbose: the preprocessing rule with this card's numbers."""
        names = ", ".join(self.class_names[:10]) + (" …" if self.num_classes > 10 else "")
        h, w = self.input_size
        crop = f"center-crop {h}×{w} (offsets round((resized - crop) / 2), half to even)"
        if self.resize == "stretch":
            resize = f"stretch to {h}×{w}"
        else:
            ch, cw = math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)
            if ch == cw:
                resize = f"shorter side → {ch}, longer side → int({ch} × long / short), {crop}"
            else:
                resize = (
                    f"cover {ch}×{cw} (h×w): the side with the larger cover/side ratio (height on a "
                    f"tie) → its cover size, the other → int(cover × other / binding side), {crop}"
                )
        decode = (
            "JPEG draft on (large JPEGs decoded at 1/2, 1/4 or 1/8 scale, still ≥ 2× the resize)"
            if self.jpeg_draft
            else "JPEG draft off (full-size decode)"
        )
        return "\n".join(
            [
                f"classes ({self.num_classes}): {names}",
                f"input: {self.channels}×{h}×{w} ({'grayscale' if self.channels == 1 else 'RGB'})",
                f"decode: {decode}",
                f"resize: {resize}, {self.interpolation}",
                f"values: x / {1 / self.scale:.6g}, - mean {list(self.mean)}, / std {list(self.std)}",
                f"output: {self.output}" + (
                    f", calibrated: logits / {self.temperature:.4g} before the softmax"
                    if self.calibration
                    else ""
                ),
            ]
        )


def _fixed(dim: object) -> int | None:
    """A graph dimension's size when it is fixed; None when dynamic (None or a symbolic name)."""
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def check_card_fits_graph(
    card: ModelCard,
    *,
    num_outputs: int | None = None,
    input_channels: int | None = None,
    input_hw: tuple[int | str | None, int | str | None] | None = None,
) -> None:
    """Raise CardError when the card disagrees with what the graph fixes.

    Checked when the graph fixes them: the output size against the class count, the input
    channels, and the input height and width against `input_size`. Dynamic dimensions (None or
    symbolic) are not checked.
    """
    if num_outputs is not None and num_outputs != card.num_classes:
        raise CardError(
            f"the card names {card.num_classes} classes but the model outputs {num_outputs} values"
        )
    if input_channels is not None and input_channels != card.channels:
        raise CardError(f"the card says {card.channels} input channels but the model takes {input_channels}")
    fh, fw = (_fixed(d) for d in input_hw) if input_hw else (None, None)
    h, w = card.input_size
    if (fh is not None and fh != h) or (fw is not None and fw != w):
        if fh is not None and fw is not None:
            fixed = f"{fh}×{fw}"
        else:
            fixed = f"height {fh}" if fh is not None else f"width {fw}"
        raise CardError(f"the card's input size {h}×{w} does not match the model's fixed input {fixed}")


def resolve_card(
    file_card: ModelCard | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    num_outputs: int | None = None,
    input_channels: int | None = None,
    input_hw: tuple[int | str | None, int | str | None] | None = None,
) -> ModelCard:
    """Combine the card found in a model file with CLI overrides (CLI > file > defaults).

    `num_outputs`, `input_channels` and `input_hw` come from the model graph; they fill gaps for
    models without a card, and `check_card_fits_graph` refuses a result that disagrees with them.
    An override `calibration=False` drops the file's calibration (`--no-calibration`).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if file_card is not None:
        base = file_card.to_dict()
    else:
        base = {}
        if "class_names" not in overrides:
            if num_outputs is None:
                raise CardError(
                    "the model carries no cvtool card and its output size is unknown: pass --classes"
                )
            # Without names the best we can do is the index, and saying so.
            base["class_names"] = [str(i) for i in range(num_outputs)]
        if input_channels in (1, 3):
            base["channels"] = input_channels
        if input_hw and all(_fixed(v) is not None for v in input_hw):
            base["input_size"] = list(input_hw)
    merged = {**base, **overrides}
    if merged.get("calibration") is False:  # --no-calibration: the file's temperature is not applied
        merged["calibration"] = None
    # Defaults for mean/std are ImageNet's (3 channels); a 1-channel model without its own
    # statistics gets the single-channel equivalent rather than an inconsistent card.
    channels = int(merged.get("channels", 3))
    for key, default in (("mean", 0.5), ("std", 0.5)):
        if key not in merged and channels == 1:
            merged[key] = [default]
    card = ModelCard.from_dict(merged)
    check_card_fits_graph(card, num_outputs=num_outputs, input_channels=input_channels, input_hw=input_hw)
    return card
