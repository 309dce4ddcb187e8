"""Style-transfer options: one dataclass with neural-style's meanings and documented defaults.

``None`` in a model-dependent field (layers, weights, pooling) means "take it from the model's card", and
from the Gatys et al. VGG-19 choices when the network has no card. docs/engine.md lists every option with
the anchor it follows and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

from modelzoo.errors import OptionError

DEFAULT_MODEL = "open_nsfw"

INIT_KINDS = ("random", "image")
OPTIMIZERS = ("lbfgs", "adam")
POOLINGS = ("max", "avg")
TV_FORMS = ("l2", "l1")
GRADIENT_NORMS = ("l1", "l2")
PIXEL_SCALES = (255.0, 256.0)
COLOR_TRANSFERS = ("none", "histogram")
PRECISIONS = ("auto", "float32", "bfloat16")
LBFGS_HISTORY_DTYPES = ("float32", "bfloat16")


@dataclass
class StyleOptions:
    """Every knob of one style transfer. Defaults follow neural-style unless the docs say otherwise."""

    # --- network and layers (None: from the model's card) ---
    model: str = DEFAULT_MODEL
    content_layers: tuple[str, ...] | None = None
    style_layers: tuple[str, ...] | None = None
    style_layer_weights: tuple[float, ...] | None = None  # multiplies style_weight, one per style layer
    pooling: str | None = None  # "max" or "avg"; None keeps the card's pooling

    # --- loss weights (None: from the model's card) ---
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    tv_form: str = "l2"  # "l2": squared differences (neural-style Lua); "l1": absolute (neural-style-pt)
    normalize_gradients: bool = False
    gradient_norm: str = "l1"  # the norm that normalize_gradients divides by: "l1" (Lua) or "l2" (neural-style-pt)
    normalize_weights: bool = False  # divide each layer's weight by the largest dimension of its target

    # --- images ---
    style_blend_weights: tuple[float, ...] | None = None  # one per style image; normalised to sum 1
    image_size: int = 512  # longest side of the output, in pixels
    style_scale: float = 1.0  # style images are resized to style_scale * image_size (longest side)
    pixel_scale: float = 255.0  # [0, 1] pixels times this for a 0-255 network; 256 reproduces neural-style Lua
    init: str = "image"  # "image" (the content), "random" (randn * 0.001), or a path to an init image
    original_colors: bool = False  # keep the content's chroma: output luminance + content Cb/Cr
    color_transfer: str = "none"  # "histogram": match each style image's colour histogram to the content first

    # --- optimisation ---
    optimizer: str = "lbfgs"
    iterations: int = 1000
    lbfgs_history: int = 100
    lbfgs_history_dtype: str = "float32"  # "bfloat16": store L-BFGS's (s, y) pairs in half the memory
    learning_rate: float = 1e1  # Adam step in network-input units (0-255 scale for Caffe models)
    seed: int | None = None  # None: not seeded; an int makes CPU runs reproducible
    precision: str = "auto"  # "bfloat16": activations in bfloat16, losses float32; "auto": see engine/precision.py
    channels_last: bool | None = None  # run the network on NHWC images; None: on for the CPU

    # --- multi-scale ---
    scales: tuple[int, ...] = ()  # longest sides, smallest first; empty: one scale at image_size
    iterations_per_scale: tuple[int, ...] = ()  # one per scale, or one for all; empty: `iterations` each

    # --- reporting ---
    print_every: int = 50  # progress events with print_due=True every N iterations (0: never)
    save_every: int = 0  # progress events carry a snapshot every N iterations (0: never)

    # --- devices and large prints ---
    device: str = "cpu"
    devices: tuple[str, ...] = ()  # several devices: the network is split across them
    split_at: tuple[int, ...] = ()  # node indices where the network moves to the next device
    cudnn: bool = True
    cudnn_autotune: bool = False
    tile: int = 0  # 0: no tiling; N: optimise N x N tiles of the largest scale(s)
    tile_overlap: int = 64

    def with_changes(self, **changes: Any) -> "StyleOptions":
        """Return a copy with ``changes`` applied and validated."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise OptionError(f"unknown option(s): {', '.join(unknown)}",
                              hint="valid options: " + ", ".join(f.name for f in fields(self)))
        updated = replace(self, **changes)
        updated.validate()
        return updated

    def validate(self) -> None:
        """Raise ``OptionError`` naming the first invalid value and the fix."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("tv_form", self.tv_form, TV_FORMS)
        _choice("gradient_norm", self.gradient_norm, GRADIENT_NORMS)
        _choice("color_transfer", self.color_transfer, COLOR_TRANSFERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("lbfgs_history_dtype", self.lbfgs_history_dtype, LBFGS_HISTORY_DTYPES)
        if self.pooling is not None:
            _choice("pooling", self.pooling, POOLINGS)
        if self.pixel_scale not in PIXEL_SCALES:
            raise OptionError(f"invalid pixel_scale {self.pixel_scale}: must be 255 or 256")
        if self.init not in INIT_KINDS and not Path(self.init).is_file():
            raise OptionError(f"invalid init {self.init!r}: not 'image', 'random' or an existing image file",
                              hint="pass --init image, --init random, or --init PATH/TO/IMAGE")

        _positive_int("image_size", self.image_size)
        _positive_int("iterations", self.iterations)
        _positive_int("lbfgs_history", self.lbfgs_history)
        _positive("style_scale", self.style_scale)
        _positive("learning_rate", self.learning_rate)

        for name in ("content_weight", "style_weight", "tv_weight"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise OptionError(f"invalid {name} {value}: must be a finite number >= 0")
        for name in ("print_every", "save_every", "tile", "tile_overlap"):
            if getattr(self, name) < 0:
                raise OptionError(f"invalid {name} {getattr(self, name)}: must be >= 0")

        if self.tile and self.tile_overlap * 2 >= self.tile:
            raise OptionError(f"invalid tile_overlap {self.tile_overlap}: must be less than half the tile ({self.tile})")

        for size in self.scales:
            _positive_int("scales", size)
        if list(self.scales) != sorted(self.scales):
            raise OptionError(f"invalid scales {list(self.scales)}: list them from smallest to largest")
        if self.iterations_per_scale and len(self.iterations_per_scale) not in (1, len(self.scales) or 1):
            raise OptionError(f"invalid iterations_per_scale {list(self.iterations_per_scale)}: give one number, "
                              f"or one per scale ({len(self.scales)})")
        if self.style_blend_weights is not None:
            if any(weight < 0 for weight in self.style_blend_weights) or sum(self.style_blend_weights) <= 0:
                raise OptionError(f"invalid style_blend_weights {list(self.style_blend_weights)}: "
                                  "must be >= 0 with a positive sum")
        if self.style_layer_weights is not None and any(weight < 0 for weight in self.style_layer_weights):
            raise OptionError(f"invalid style_layer_weights {list(self.style_layer_weights)}: must be >= 0")


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise OptionError(f"invalid {name} {value!r}: must be one of {', '.join(choices)}")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise OptionError(f"invalid {name} {value!r}: must be a number > 0")


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OptionError(f"invalid {name} {value!r}: must be a whole number > 0")


def parse_number(text: str | float | int, name: str = "value") -> float:
    """Parse a number written as ``5``, ``0.5``, ``1e2``, ``5e0`` or ``1e-3``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    try:
        value = float(str(text).strip())
    except ValueError:
        raise OptionError(f"invalid {name} {text!r}: expected a number such as 5, 0.5, 1e2 or 1e-3") from None
    if not math.isfinite(value):
        raise OptionError(f"invalid {name} {text!r}: must be finite")
    return value


def parse_count(text: str | int | float, name: str = "value") -> int:
    """Parse a whole number, also in scientific notation (``1e3`` is 1000)."""
    value = parse_number(text, name)
    if value != int(value):
        raise OptionError(f"invalid {name} {text!r}: expected a whole number")
    return int(value)


def parse_numbers(text: str, name: str = "value") -> tuple[float, ...]:
    """Parse a comma-separated list of numbers (``3,7`` or ``1e0,5e-1``)."""
    return tuple(parse_number(part, name) for part in _split(text))


def parse_counts(text: str, name: str = "value") -> tuple[int, ...]:
    """Parse a comma-separated list of whole numbers."""
    return tuple(parse_count(part, name) for part in _split(text))


def parse_names(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of layer names."""
    return tuple(_split(text))


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]
