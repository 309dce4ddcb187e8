"""Model surgery on a converted graph: the transforms that model cards declare.

Each function returns a new spec (and weights where it removes nodes) and leaves its arguments unchanged.
Weights of removed nodes are dropped, so a saved model holds only what its graph uses.
"""

from __future__ import annotations

import copy
import logging

import torch

from converters.errors import GraphSpecError, UnknownLayerError
from converters.graph import GraphSpec, Node

logger = logging.getLogger(__name__)

POOLING_MODES = ("max", "avg")
# Ops that start the classifier: the first of them and every node after it go in ``drop_classifier``.
CLASSIFIER_OPS = ("linear",)


def prune_weights(spec: GraphSpec, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the weights whose node (the key before the first '.') is still in ``spec``."""
    names = set(spec.node_names)
    return {key: value for key, value in weights.items() if key.split(".", 1)[0] in names}


def _graph_outputs(nodes: list[Node], inputs: dict[str, list[int]]) -> list[str]:
    """Return the values that no node reads: the outputs of a cut graph."""
    read = {value for node in nodes for value in node.inputs}
    return [value for node in nodes for value in node.outputs if value not in read]


def strip_dropout(spec: GraphSpec, weights: dict[str, torch.Tensor]) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Remove Dropout nodes (identities at inference) and rewire their readers to the Dropout's input."""
    rename: dict[str, str] = {}
    nodes = []
    for node in spec.nodes:
        inputs = [rename.get(value, value) for value in node.inputs]
        if node.op == "dropout":
            rename[node.outputs[0]] = inputs[0]
            continue
        nodes.append(Node(node.name, node.op, inputs, list(node.outputs), copy.deepcopy(node.attrs)))
    outputs = [rename.get(value, value) for value in spec.outputs]
    result = GraphSpec(nodes, dict(spec.inputs), list(dict.fromkeys(outputs)), dict(spec.metadata))
    result.validate()
    return result, prune_weights(result, weights)


def drop_classifier(spec: GraphSpec, weights: dict[str, torch.Tensor]) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Remove the classifier: the first fully connected node and every node after it.

    A network without a fully connected layer (NIN, FCN) is returned unchanged.
    """
    first = next((index for index, node in enumerate(spec.nodes) if node.op in CLASSIFIER_OPS), None)
    if first is None:
        return spec, weights
    if first == 0:
        raise GraphSpecError("the network starts with a fully connected layer; dropping the classifier would leave nothing")
    nodes = copy.deepcopy(spec.nodes[:first])
    result = GraphSpec(nodes, dict(spec.inputs), _graph_outputs(nodes, spec.inputs), dict(spec.metadata))
    result.validate()
    logger.debug("dropped %d classifier nodes from '%s' on", len(spec.nodes) - first, spec.nodes[first].name)
    return result, prune_weights(result, weights)


def truncate(spec: GraphSpec, deepest_layer: str) -> GraphSpec:
    """Keep the nodes up to ``deepest_layer`` (in execution order) and make its output the graph's output."""
    names = spec.node_names
    if deepest_layer not in names:
        raise UnknownLayerError([deepest_layer], names)
    last = names.index(deepest_layer)
    nodes = copy.deepcopy(spec.nodes[: last + 1])
    result = GraphSpec(nodes, dict(spec.inputs), [nodes[-1].outputs[0]], dict(spec.metadata))
    result.validate()
    return result


def swap_pooling(spec: GraphSpec, mode: str) -> GraphSpec:
    """Set every pooling node to ``mode`` ("max" or "avg"), keeping kernel, stride, padding and rounding.

    The swap is unscaled, as in neural-style. Global pooling nodes are left alone.
    """
    if mode not in POOLING_MODES:
        raise GraphSpecError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {mode!r}")
    result = copy.deepcopy(spec)
    for node in result.nodes:
        if node.op == "pool2d" and not node.attrs.get("global", False):
            node.attrs["mode"] = mode
    return result


def rename_keys(weights: dict[str, torch.Tensor], pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]] | dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename weight keys: each ``(old, new)`` pair maps the key ``old``, or keys starting ``old.``, to ``new``.

    Pairs apply in order to the original keys, and a key matches at most one pair (the first).
    """
    items = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        new_key = key
        for old, new in items:
            if key == old:
                new_key = new
                break
            if key.startswith(old + "."):
                new_key = new + key[len(old):]
                break
        if new_key in renamed:
            raise GraphSpecError(f"renaming weight keys maps two keys to '{new_key}'; check the rename pairs {items}")
        renamed[new_key] = value
    return renamed
