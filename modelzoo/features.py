"""Feature networks: load a converted model by name or folder, and move images into its input space."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from converters import transforms
from converters.graph import GRAPH_FILE, load_converted
from converters.network import GraphNet
from modelzoo import config
from modelzoo.errors import NotCachedError
from registry import InputContract, ModelCard, Registry

logger = logging.getLogger(__name__)


def _card(name: str) -> ModelCard:
    return Registry.load(config.user_registry_dir()).get(name)


def load_model(name_or_dir: str | Path, *, device: str | torch.device = "cpu", pooling: str | None = None,
               layers: list[str] | tuple[str, ...] | None = None) -> GraphNet:
    """Return the feature network of a converted model, in eval mode on ``device``.

    ``name_or_dir`` is a folder containing ``graph.json`` (from ``nstzoo convert``), or a model name whose
    converted files are in the cache. ``nstzoo fetch NAME`` puts them there, because this function never
    downloads. ``pooling`` ("max" or "avg") replaces every pooling layer's mode. ``layers`` truncates
    the network after the deepest of those layers. The result's ``extract(x, names)`` takes ``x`` in the
    network's own input space (see ``to_network_input``) and accepts the card's layer names; ``card`` is
    the model card, or None for a bare folder.
    """
    folder = Path(name_or_dir)
    card: ModelCard | None = None
    if not (folder / GRAPH_FILE).is_file():
        name = str(name_or_dir)
        if folder.is_dir() or "/" in name or "\\" in name:
            raise NotCachedError(f"{GRAPH_FILE} not found in {folder}; convert a model into it with 'nstzoo convert'",
                                 hint="nstzoo convert MODEL -o FOLDER")
        card = _card(name)
        folder = config.cache_dir() / card.name / "converted"
        if not (folder / GRAPH_FILE).is_file():
            raise NotCachedError(f"model '{card.name}' is not converted in the cache ({folder})", hint=f"nstzoo fetch {card.name}")

    spec, weights = load_converted(folder)
    aliases = dict(card.layer_nodes) if card is not None else {}
    if layers:
        nodes = [aliases.get(layer, layer) for layer in layers]
        unknown = [layer for layer, node in zip(layers, nodes) if node not in spec.node_names]
        if unknown:
            from converters.errors import UnknownLayerError

            raise UnknownLayerError(unknown, spec.node_names, card.name if card else "")
        deepest = max(nodes, key=spec.node_names.index)
        spec = transforms.truncate(spec, deepest)
        weights = transforms.prune_weights(spec, weights)
    if pooling is not None:
        spec = transforms.swap_pooling(spec, pooling)

    model = GraphNet(spec, weights)
    model.aliases = aliases
    model.card = card
    logger.debug("loaded %s from %s: %d layers", card.name if card else folder, folder, len(spec.nodes))
    return model.to(device)


def _channel_view(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


def to_network_input(rgb01: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Map RGB images in [0, 1] (N, 3, H, W) into a network's input space.

    Scale to ``value_range``, reorder the channels to ``channel_order``, then subtract ``mean`` and divide
    by ``std``, both given in the network's channel order and value scale.
    """
    if rgb01.dim() != 4 or rgb01.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W), got {list(rgb01.shape)}")
    x = rgb01 * contract.value_range
    if contract.channel_order == "BGR":
        x = x.flip(1)
    return (x - _channel_view(contract.mean, x)) / _channel_view(contract.std, x)


def from_network_input(x: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Invert ``to_network_input``: return RGB images in the [0, 1] scale (not clamped)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {list(x.shape)}")
    y = x * _channel_view(contract.std, x) + _channel_view(contract.mean, x)
    if contract.channel_order == "BGR":
        y = y.flip(1)
    return y / contract.value_range
