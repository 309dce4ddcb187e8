"""Targets of a style transfer: content activations and blended style Gram matrices, computed once.

Under bfloat16 autocast the network runs in bfloat16, as it does during the optimisation, and the targets
are stored in float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from modelzoo.engine.losses import float32_gram

logger = logging.getLogger(__name__)


@dataclass
class StyleTargets:
    """Blended Gram matrices per style layer; independent of the image size (see ``gram_matrix``)."""

    grams: dict[str, Tensor]


@dataclass
class ContentTargets:
    """Content activations per content layer, for one image size."""

    features: dict[str, Tensor]


def blend_weights(count: int, weights: tuple[float, ...] | None) -> list[float]:
    """Return the style blend weights normalised to sum 1 (equal weights when None)."""
    from modelzoo.errors import OptionError

    raw = list(weights) if weights is not None else [1.0] * count
    if len(raw) != count:
        raise OptionError(f"invalid style_blend_weights {raw}: expected one weight per style image ({count})")
    total = sum(raw)
    return [weight / total for weight in raw]


@torch.no_grad()
def compute_style_targets(net, style_inputs: list[Tensor], weights: list[float], layers: tuple[str, ...]) -> StyleTargets:
    """Run each style image (network space) once and return the weighted sum of its Gram matrices."""
    grams: dict[str, Tensor] = {}
    for image, weight in zip(style_inputs, weights):
        features = net.extract(image, list(layers))
        for layer in layers:
            gram = float32_gram(features[layer]) * weight
            grams[layer] = grams[layer] + gram if layer in grams else gram
        del features
    return StyleTargets(grams)


@torch.no_grad()
def compute_content_targets(net, content_input: Tensor, layers: tuple[str, ...]) -> ContentTargets:
    """Return the content image's activations at ``layers``."""
    features = net.extract(content_input, list(layers))
    return ContentTargets({layer: features[layer].detach().float() for layer in layers})
