"""Networks and images shared by the engine tests (no tests here).

``tiny_vgg`` is a real three-block VGG-shaped ``GraphNet`` with He-initialised random weights, small
enough that a 10-iteration style transfer at 48 pixels takes well under a second. ``open_nsfw_net``
converts the real open_nsfw Caffe model once per session and attaches its registry card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from converters.graph import GraphSpec, Node, save_converted
from converters.network import GraphNet

EXAMPLES = Path(__file__).resolve().parents[1] / "modelzoo" / "examples"
CONTENT_PHOTO = EXAMPLES / "astronaut.jpg"
CAT_PHOTO = EXAMPLES / "chelsea.jpg"
VAN_GOGH = EXAMPLES / "van_gogh_auvers.jpg"
GREAT_WAVE = EXAMPLES / "hokusai_great_wave.jpg"
KANDINSKY = EXAMPLES / "kandinsky_composition_viii.jpg"


def tiny_vgg_spec(seed: int = 0) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Return a conv-relu-pool x 3 graph (16, 32, 64 channels) named like VGG's layers, with its weights."""
    generator = torch.Generator().manual_seed(seed)
    nodes: list[Node] = []
    weights: dict[str, torch.Tensor] = {}
    previous, channels_in = "input", 3
    for block, channels_out in enumerate((16, 32, 64), start=1):
        conv, relu, pool = f"conv{block}_1", f"relu{block}_1", f"pool{block}"
        nodes.append(Node(conv, "conv2d", [previous], [conv], {"padding": 1}))
        nodes.append(Node(relu, "relu", [conv], [relu]))
        nodes.append(Node(pool, "pool2d", [relu], [pool], {"mode": "max", "kernel": 2, "stride": 2}))
        std = (2.0 / (channels_in * 9)) ** 0.5
        weights[f"{conv}.weight"] = torch.randn(channels_out, channels_in, 3, 3, generator=generator) * std
        weights[f"{conv}.bias"] = torch.randn(channels_out, generator=generator) * 0.01
        previous, channels_in = pool, channels_out
    return GraphSpec(nodes, {"input": [1, 3, 0, 0]}, [previous]), weights


def tiny_vgg(seed: int = 0) -> GraphNet:
    spec, weights = tiny_vgg_spec(seed)
    return GraphNet(spec, weights)


def save_tiny_vgg(folder: Path, seed: int = 0) -> Path:
    spec, weights = tiny_vgg_spec(seed)
    return save_converted(folder, spec, weights)


def gray(rgb: torch.Tensor) -> np.ndarray:
    """Return the luma (BT.601) of an RGB [1, 3, H, W] tensor as an H x W float64 array."""
    r, g, b = rgb[0].double().numpy()
    return 0.299 * r + 0.587 * g + 0.114 * b


@pytest.fixture(scope="session")
def open_nsfw_net(open_nsfw_files, tmp_path_factory):
    """The real open_nsfw network converted from Caffe, with its registry card attached."""
    from converters.formats import ConvertOptions, convert
    from registry import Registry

    try:
        spec, weights = convert("caffe", open_nsfw_files["caffemodel"], ConvertOptions(prototxt=open_nsfw_files["prototxt"]))
    except ModuleNotFoundError as error:
        pytest.skip(f"the Caffe converter is not available: {error}")
    net = GraphNet(spec, weights)
    net.card = Registry.load().get("open_nsfw")
    return net


def tiny_card(**defaults):
    """A registry card for ``tiny_vgg``: BGR 0-255 input with the VGG mean, and Gatys-like defaults."""
    from registry import card_from_dict

    table = {
        "content_layers": ["relu2_1"],
        "style_layers": ["relu1_1", "relu2_1", "relu3_1"],
        "content_weight": 5.0,
        "style_weight": 100.0,
        "tv_weight": 1e-3,
    }
    table.update(defaults)
    spec, _ = tiny_vgg_spec()
    data = {
        "name": "tiny", "title": "tiny VGG", "family": "vgg", "format": "safetensors", "licence": "test",
        "files": [{"name": "weights.safetensors", "sources": []}],
        "input": {"channel_order": "BGR", "value_range": 255, "mean": [103.939, 116.779, 123.68]},
        "layers": {"names": spec.node_names},
        "defaults": table,
    }
    return card_from_dict(data, "<tiny card>")


def tiny_vgg_with_card(**defaults) -> GraphNet:
    net = tiny_vgg()
    net.card = tiny_card(**defaults)
    return net
