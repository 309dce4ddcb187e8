"""The feature network the engine runs: loading by name, pooling, and the card's input contract."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from modelzoo import config
from modelzoo.errors import NotCachedError, OptionError

logger = logging.getLogger(__name__)

# The Gatys et al. choices, used when a network has no card.
FALLBACK_CONTENT_LAYERS = ("relu4_2",)
FALLBACK_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class FeatureNetwork(Protocol):
    """The interface the engine needs: named activations, computed only up to the deepest one requested."""

    layer_names: list[str]

    def extract(self, x: Tensor, layer_names: list[str]) -> dict[str, Tensor]: ...

    def check_layers(self, names: list[str]) -> None: ...


@dataclass(frozen=True)
class Contract:
    """The mapping from RGB in [0, 1] to the network's input: channel order, pixel scale, mean and std."""

    channel_order: str = "RGB"
    value_range: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def from_card(cls, card: Any, pixel_scale: float = 255.0) -> "Contract":
        """Return the contract of ``card`` (or plain RGB [0, 1] for None).

        ``pixel_scale`` replaces a value range of 255: neural-style Lua multiplies by 256 (see docs/engine.md).
        """
        if card is None:
            return cls()
        contract = card.input
        value_range = float(contract.value_range)
        if value_range == 255.0:
            value_range = float(pixel_scale)
        return cls(contract.channel_order, value_range, tuple(contract.mean), tuple(contract.std))

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        return mean, std

    def to_network(self, rgb01: Tensor) -> Tensor:
        """Map RGB in [0, 1] ([N, 3, H, W]) to the network's input space."""
        x = rgb01.flip(1) if self.channel_order == "BGR" else rgb01
        mean, std = self._stats(x)
        return (x * self.value_range - mean) / std

    def from_network(self, x: Tensor) -> Tensor:
        """Map a network input back to RGB in [0, 1] (not clipped)."""
        mean, std = self._stats(x)
        rgb = (x * std + mean) / self.value_range
        return rgb.flip(1) if self.channel_order == "BGR" else rgb


def load_network(model: Any, device: str = "cpu", pooling: str | None = None) -> FeatureNetwork:
    """Return a feature network for ``model``: a network object as is, or a registry name or converted folder.

    A named model that is not cached is fetched first, with one log line, unless NSTZOO_OFFLINE=1.
    """
    if hasattr(model, "extract"):
        if pooling is not None:
            set_pooling(model, pooling)
        return model
    from modelzoo.features import load_model

    try:
        return load_model(str(model), device=device, pooling=pooling)
    except NotCachedError:
        if config.offline():
            raise
    logger.info("model '%s' is not in the cache; fetching it (set NSTZOO_OFFLINE=1 to prevent this)", model)
    from modelzoo.fetch import fetch

    fetch(str(model))
    return load_model(str(model), device=device, pooling=pooling)


def set_pooling(net: Any, pooling: str) -> None:
    """Switch every max or average pooling layer of ``net`` to ``pooling`` ("max" or "avg").

    The swap is unscaled, as in neural-style: average pooling gives smaller activations than max pooling.
    Global pooling layers are left alone.
    """
    from converters.ops import Pool2d

    for module in net.modules():
        if isinstance(module, Pool2d) and not module.is_global:
            module.mode = pooling


def card_of(net: Any) -> Any:
    """Return the registry card attached to ``net``, or None."""
    return getattr(net, "card", None)


@dataclass(frozen=True)
class LayerPlan:
    """The layers and weights of one style transfer, resolved from the options and the card."""

    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...]
    content_weight: float
    style_weight: float
    tv_weight: float

    @property
    def all_layers(self) -> list[str]:
        return list(dict.fromkeys(self.content_layers + self.style_layers))


def plan_layers(net: FeatureNetwork, options: Any) -> LayerPlan:
    """Resolve the layers and weights from ``options``, then the card's defaults, then Gatys et al."""
    card = card_of(net)
    defaults = card.defaults if card is not None else None
    content = options.content_layers or (defaults.content_layers if defaults else FALLBACK_CONTENT_LAYERS)
    style = options.style_layers or (defaults.style_layers if defaults else FALLBACK_STYLE_LAYERS)
    net.check_layers(list(content) + list(style))
    if options.style_layer_weights is not None:
        layer_weights = tuple(options.style_layer_weights)
    elif defaults is not None and defaults.style_layer_weights and tuple(style) == tuple(defaults.style_layers):
        layer_weights = tuple(defaults.style_layer_weights)
    else:
        layer_weights = (1.0,) * len(style)
    if len(layer_weights) != len(style):
        raise OptionError(f"invalid style_layer_weights {list(layer_weights)}: expected one weight per style layer "
                          f"({len(style)}: {', '.join(style)})")

    def weight(name: str, fallback: float) -> float:
        value = getattr(options, name)
        if value is not None:
            return float(value)
        return float(getattr(defaults, name)) if defaults is not None else fallback

    return LayerPlan(tuple(content), tuple(style), layer_weights,
                     weight("content_weight", 5.0), weight("style_weight", 100.0), weight("tv_weight", 1e-3))
