"""Speed-ups of a converted network for one style transfer, which leave every requested activation unchanged.

``prepare_for_layers`` returns a copy of a ``GraphNet`` that keeps only the nodes up to the deepest
requested layer and folds each inference-time Caffe BatchNorm (and a Scale after it) into the convolution
before it. A ResNet converted from Caffe spends about a third of its time in those element-wise layers.
A chain is folded only when the convolution's and BatchNorm's own outputs are neither requested nor read
by any other node, so every layer the engine requests has the same value (up to float rounding).

A ReLU whose input is such a private convolution output runs in place, as neural-style's ReLUs do. That
is safe because a convolution's backward pass needs its input and weight, never its output.

``lean_backward`` (see ``modelzoo.engine.lean``) then wraps each convolution, such ReLU and max pooling so
that the backward pass keeps less memory.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

FOLDABLE_NORMS = ("caffe_batch_norm",)
FOLDABLE_AFFINES = ("caffe_scale",)


def prepare_for_layers(net, layers: list[str], lean_backward: bool = False):
    """Return a truncated, BatchNorm-folded copy of ``net`` for ``layers``, or ``net`` itself when it is no GraphNet.

    The copy shares the unfolded weights of ``net``.
    """
    from converters.graph import GraphSpec
    from converters.network import GraphNet

    if type(net) is not GraphNet or not layers:
        return net
    spec = net.spec
    node_names = [net.node_for(name) for name in layers]  # a card may map layer names to other node names
    index = {node.name: position for position, node in enumerate(spec.nodes)}
    deepest = max(index[name] for name in node_names)
    nodes = spec.nodes[:deepest + 1]
    weights = {f"{node.name}.{key}": value.detach()
               for node, module in zip(nodes, net.layers) for key, value in module.state_dict().items()}
    readers = _readers(nodes)
    keep = set(node_names)

    fused_nodes = []
    fused_weights: dict[str, torch.Tensor] = {}
    reused: dict[int, tuple] = {}  # new node index -> (original node, original module), kept as they are
    position = 0
    while position < len(nodes):
        chain = _chain(nodes, position, readers, keep, weights)
        if len(chain) > 1:
            fused_nodes.append(_fold(chain, weights, fused_weights))
        else:
            reused[len(fused_nodes)] = (nodes[position], net.layers[position])
            fused_nodes.append(_placeholder(nodes[position]))
        position += len(chain)

    last_outputs = [fused_nodes[-1].outputs[0]]
    fused = GraphNet(GraphSpec(fused_nodes, dict(spec.inputs), last_outputs, dict(spec.metadata)), fused_weights)
    for new_index, (original, module) in reused.items():
        fused.layers[new_index] = module  # keeps its weights and any change made to it, such as pooling
        fused.spec.nodes[new_index] = original
    _relu_in_place(fused, keep, lean_backward)
    if lean_backward:
        _wrap_lean(fused, keep)
    fused.card = net.card
    fused.aliases = dict(net.aliases)
    device = next(net.parameters(), torch.empty(0)).device
    logger.debug("kept %d of %d nodes, %d after folding normalisation layers", len(nodes), len(spec.nodes),
                 len(fused_nodes))
    return fused.to(device)


class InPlaceReLU(torch.nn.Module):
    """ReLU (or leaky ReLU) that overwrites its input."""

    def __init__(self, negative_slope: float) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return torch.relu_(x)
        return torch.nn.functional.leaky_relu_(x, self.negative_slope)


def _relu_in_place(net, keep: set[str], masked: bool = False) -> None:
    """Make each ReLU in place whose input is a convolution output that no other node reads or is requested.

    With ``masked``, a plain ReLU whose own output is not requested saves a one-byte mask for backward.
    """
    from modelzoo.engine.lean import MaskedReLU

    nodes = net.spec.nodes
    readers = _readers(nodes)
    producers = {node.outputs[0]: node for node in nodes}
    for index, node in enumerate(nodes):
        if node.op != "relu" or len(node.inputs) != 1:
            continue
        producer = producers.get(node.inputs[0])
        if producer is None or producer.op != "conv2d" or producer.name in keep or readers[node.inputs[0]] != 1:
            continue
        slope = float(node.attrs.get("negative_slope", 0.0))
        net.layers[index] = MaskedReLU() if masked and slope == 0.0 and node.name not in keep else InPlaceReLU(slope)


def _wrap_lean(net, keep: set[str]) -> None:
    """Wrap each convolution and pooling layer so that backward keeps only what the input gradient needs.

    A masked ReLU whose output only a max pooling reads, and is not requested, is left to that pooling
    (``DeferredReLU``): the pooling clamps its smaller output and saves no separate mask.
    """
    from converters.ops import Conv2d, Pool2d
    from modelzoo.engine.lean import CompactMaxPool2d, DeferredReLU, FrozenConv2d, MaskedReLU

    nodes = net.spec.nodes
    readers = _readers(nodes)
    producers = {node.outputs[0]: index for index, node in enumerate(nodes)}
    for index, module in enumerate(net.layers):
        if type(module) is Conv2d:
            net.layers[index] = FrozenConv2d(module)
        elif type(module) is Pool2d:
            source = producers.get(nodes[index].inputs[0])
            fuse = (module.mode == "max" and source is not None and isinstance(net.layers[source], MaskedReLU)
                    and nodes[source].name not in keep and readers[nodes[source].outputs[0]] == 1)
            net.layers[index] = CompactMaxPool2d(module, relu=fuse)
            if fuse:
                net.layers[source] = DeferredReLU()


def _placeholder(node):
    """Return ``node`` as an identity op, so that building the graph copies no weights.

    The original node and module replace it right after the graph is built.
    """
    from converters.graph import Node

    return Node(node.name, "identity", list(node.inputs), list(node.outputs), {})


def _readers(nodes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        for value in node.inputs:
            counts[value] = counts.get(value, 0) + 1
    return counts


def _chain(nodes, position: int, readers: dict[str, int], keep: set[str], weights) -> list:
    """Return conv2d [-> batch norm] [-> scale] starting at ``position`` when it can be folded, else one node."""
    first = nodes[position]
    if first.op != "conv2d":
        return [first]
    chain = [first]
    for ops in (FOLDABLE_NORMS, FOLDABLE_AFFINES):
        previous = chain[-1]
        following = nodes[position + len(chain)] if position + len(chain) < len(nodes) else None
        if following is None or following.op not in ops:
            break
        if previous.name in keep or readers.get(previous.outputs[0], 0) != 1:
            break
        if following.inputs != [previous.outputs[0]] or len(following.outputs) != 1:
            break
        if following.op in FOLDABLE_AFFINES and (int(following.attrs.get("axis", 1)) != 1
                                                 or f"{following.name}.weight" not in weights):
            break
        chain.append(following)
    return chain


def _fold(chain, weights, out: dict[str, torch.Tensor]):
    """Fold the chain into one conv2d node named after (and writing the value of) its last node."""
    from converters.graph import Node

    conv = chain[0]
    weight = weights[f"{conv.name}.weight"].double()
    bias = weights.get(f"{conv.name}.bias")
    bias = bias.double() if bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    for node in chain[1:]:
        if node.op in FOLDABLE_NORMS:
            inverse_std = 1.0 / torch.sqrt(weights[f"{node.name}.var"].double() + float(node.attrs.get("eps", 1e-5)))
            weight = weight * inverse_std.view(-1, 1, 1, 1)
            bias = (bias - weights[f"{node.name}.mean"].double()) * inverse_std
        else:
            factor = weights[f"{node.name}.weight"].double().reshape(-1)
            weight = weight * factor.view(-1, 1, 1, 1)
            bias = bias * factor
            shift = weights.get(f"{node.name}.bias")
            if shift is not None:
                bias = bias + shift.double().reshape(-1)
    last = chain[-1]
    out[f"{last.name}.weight"] = weight.float()
    out[f"{last.name}.bias"] = bias.float()
    return Node(last.name, "conv2d", list(conv.inputs), list(last.outputs), dict(conv.attrs))
