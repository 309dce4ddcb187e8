"""Turn a parsed prototxt and the caffemodel's blobs into a graph spec and its weights.

Caffe names data by blob (``top``), and in-place layers write a blob under the name they read. The graph
instead gives each layer its own output value, named after the layer, so ``conv1_1`` stays the convolution's
output after the in-place ``relu1_1`` has run, as OpenCV DNN and neural-style report it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from converters import ops, ops_caffe  # noqa: F401  (ops_caffe registers the caffe_* ops)
from converters.caffe import proto
from converters.caffe.errors import CaffeNetError
from converters.caffe.layers import LAYER_CONVERTERS, WEIGHTED_TYPES, CaffeLayer
from converters.caffe.reader import CaffeWeights
from converters.errors import UnsupportedLayerError
from converters.graph import GraphSpec, Node

logger = logging.getLogger(__name__)

# Data layers whose first top is the network input; MemoryData declares its shape, the others need one.
# A Python layer without bottoms is a data layer too (FCN's training definitions use one).
DATA_LAYER_TYPES = {"Input", "MemoryData", "Data", "ImageData", "HDF5Data", "WindowData", "DummyData"}
IGNORED_TYPES = {"Silence", "Accuracy"}
TEST_PHASE = 1


def layers_of(net: Any) -> list[CaffeLayer]:
    """Return the layers that run at inference (phase TEST), V1 types mapped to V2 type strings."""
    result = []
    for message in net.layer:
        if _in_test_phase(message):
            result.append(CaffeLayer(message.name, message.type, list(message.bottom), list(message.top), message))
    for message in net.layers:
        if _in_test_phase(message):
            kind = proto.v1_type_name(message.type)
            result.append(CaffeLayer(message.name, kind, list(message.bottom), list(message.top), message))
    return result


def _rule_matches(rule: Any) -> bool:
    # The inference state: phase TEST, level 0, no stages.
    if rule.HasField("phase") and rule.phase != TEST_PHASE:
        return False
    if rule.HasField("min_level") and rule.min_level > 0:
        return False
    if rule.HasField("max_level") and rule.max_level < 0:
        return False
    return not rule.stage


def _in_test_phase(message: Any) -> bool:
    if message.include:
        return any(_rule_matches(rule) for rule in message.include)
    return not any(_rule_matches(rule) for rule in message.exclude)


def declared_inputs(net: Any, layers: list[CaffeLayer], input_shape: tuple[int, ...] | None, source: str) -> dict[str, list[int]]:
    """Return each network input blob with its shape, from whichever input form the prototxt uses."""
    inputs: dict[str, list[int]] = {}
    for index, name in enumerate(net.input):
        if index < len(net.input_shape):
            inputs[name] = [int(dim) for dim in net.input_shape[index].dim]
        elif len(net.input_dim) >= 4 * (index + 1):
            inputs[name] = [int(dim) for dim in net.input_dim[4 * index: 4 * index + 4]]
        else:
            inputs[name] = []
    for layer in layers:
        if not _is_data_layer(layer) or not layer.tops:
            continue
        if layer.type == "Input":
            shapes = list(layer.param("input_param").shape)
            for index, top in enumerate(layer.tops):
                # One shape per top, or one shape for every top.
                if index < len(shapes):
                    inputs[top] = [int(dim) for dim in shapes[index].dim]
                elif len(shapes) == 1:
                    inputs[top] = [int(dim) for dim in shapes[0].dim]
                else:
                    inputs[top] = []
        elif layer.type == "MemoryData":
            param = layer.param("memory_data_param")
            inputs[layer.tops[0]] = [int(param.batch_size), int(param.channels), int(param.height), int(param.width)]
        else:
            inputs[layer.tops[0]] = []
    if not inputs and input_shape:
        # No declared input: the first blob that a layer reads and no layer writes is the input.
        written = {top for layer in layers for top in layer.tops}
        free = [blob for layer in layers for blob in layer.bottoms if blob not in written]
        if free:
            inputs[free[0]] = []
    if not inputs:
        raise CaffeNetError(
            f"{source}: the network declares no input (no 'input', no Input or data layer); "
            "add one to the prototxt or pass --input-shape"
        )
    if input_shape:
        first = next(iter(inputs))
        inputs[first] = [int(dim) for dim in input_shape]
    missing = [name for name, shape in inputs.items() if not shape]
    if missing:
        raise CaffeNetError(
            f"{source}: the shape of input {', '.join(repr(name) for name in missing)} is not in the prototxt "
            "(a Data layer reads it from its database); pass it, e.g. --input-shape 1,3,224,224"
        )
    return inputs


def _is_data_layer(layer: CaffeLayer) -> bool:
    return layer.type in DATA_LAYER_TYPES or (layer.type == "Python" and not layer.bottoms)


def _is_training_only(layer: CaffeLayer) -> bool:
    """Return True for loss and accuracy layers, which a training definition ends with."""
    return layer.type.endswith("Loss") or layer.type in IGNORED_TYPES


class _Names:
    """Hands out unique names, appending '#2', '#3' on a clash."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.taken = set(taken or ())

    def claim(self, name: str) -> str:
        candidate, number = name, 1
        while candidate in self.taken:
            number += 1
            candidate = f"{name}#{number}"
        self.taken.add(candidate)
        return candidate


def build_graph(net: Any, weights: CaffeWeights, input_shape: tuple[int, ...] | None = None,
                source: str = "<prototxt>") -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Build the graph spec and weights of ``net`` with the blobs in ``weights``."""
    layers = layers_of(net)
    inputs = declared_inputs(net, layers, input_shape, source)
    _check_supported(layers, source)

    missing_weights = [f"{layer.name} ({layer.type})" for layer in layers
                       if _needs_weights(layer) and not _is_training_only(layer) and not weights.blobs.get(layer.name)]
    if missing_weights:
        raise CaffeNetError(
            f"{source}: the caffemodel has no weights for {len(missing_weights)} layer(s): {', '.join(missing_weights)}; "
            "the caffemodel does not belong to this prototxt (layer names must match)"
        )

    value_of_blob = {name: name for name in inputs}
    # Blobs only a training run has: the labels from data layers, and whatever is computed from them.
    training_blobs = {top for layer in layers if _is_data_layer(layer) for top in layer.tops[1:]}
    node_names = _Names()
    value_names = _Names(set(inputs))
    nodes: list[Node] = []
    tensors: dict[str, torch.Tensor] = {}
    read_values: set[str] = set()
    for layer in layers:
        if _is_data_layer(layer) or _is_training_only(layer):
            continue
        if any(blob in training_blobs for blob in layer.bottoms):
            logger.info("%s: layer '%s' (%s) reads labels, so it is left out", source, layer.name, layer.type)
            training_blobs.update(layer.tops)
            continue
        node_name = node_names.claim(layer.name)
        if node_name != layer.name:
            logger.warning("%s: layer name '%s' is used twice; the later one is node '%s'", source, layer.name, node_name)
        bottoms = []
        for blob in layer.bottoms:
            if blob not in value_of_blob:
                raise CaffeNetError(f"{source}: layer '{layer.name}' reads blob '{blob}', which no earlier layer writes")
            bottoms.append(value_of_blob[blob])
        read_values.update(bottoms)

        draft = LAYER_CONVERTERS[layer.type](layer, weights.blobs.get(layer.name, []))
        outputs = [value_names.claim(node_name)]
        outputs += [value_names.claim(f"{node_name}:{top}") for top in layer.tops[1:]]
        for top, value in zip(layer.tops, outputs):
            value_of_blob[top] = value
        attrs = dict(draft.attrs, caffe_type=layer.type)
        nodes.append(Node(node_name, draft.op, bottoms, outputs, attrs))
        for key, tensor in draft.weights.items():
            tensors[f"{node_name}.{key}"] = tensor

    produced = [value for node in nodes for value in node.outputs]
    outputs = [value for value in produced if value not in read_values and value in value_of_blob.values()]
    metadata = {"source_format": "caffe", "net_name": net.name or weights.net_name, "caffe_v1": bool(net.layers)}
    spec = GraphSpec(nodes, inputs, outputs, metadata)
    spec.validate()
    check_shapes(spec, tensors, source)
    return spec, tensors


def _needs_weights(layer: CaffeLayer) -> bool:
    if layer.type in WEIGHTED_TYPES:
        return True
    if layer.type in ("Scale", "Bias") and len(layer.bottoms) == 1:
        return True
    return layer.type == "Scale" and bool(layer.param("scale_param").bias_term)


def _check_supported(layers: list[CaffeLayer], source: str) -> None:
    unsupported = []
    for layer in layers:
        if _is_data_layer(layer) or _is_training_only(layer):
            continue
        if layer.type not in LAYER_CONVERTERS:
            unsupported.append((layer.name, layer.type))
        elif layer.type == "Pooling" and layer.param("pooling_param").pool == 2:
            unsupported.append((layer.name, "Pooling with pool: STOCHASTIC"))
    if unsupported:
        raise UnsupportedLayerError(unsupported, source)


def check_shapes(spec: GraphSpec, tensors: dict[str, torch.Tensor], source: str) -> dict[str, list[int]]:
    """Run the graph on empty tensors (batch size 0) and return each value's shape.

    Every op checks its shapes as it would on data, at no cost, so a blob that does not fit the shapes the
    prototxt implies fails here, with the layer named. (Meta tensors would do the same, but their first
    use imports parts of torch that cost seconds and 150 MB.)
    """
    values = {name: torch.empty([0, *shape[1:]]) for name, shape in spec.inputs.items()}
    for node in spec.nodes:
        prefix = f"{node.name}."
        node_weights = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        arguments = [values[name] for name in node.inputs]
        try:
            with torch.no_grad():
                module = ops.build_module(node.op, node.attrs, node_weights, node.name)
                result = module(*arguments)
        except (RuntimeError, ValueError, IndexError) as error:
            in_shapes = ", ".join(str([1, *argument.shape[1:]]) for argument in arguments)
            weight_shapes = ", ".join(f"{key} {list(value.shape)}" for key, value in node_weights.items())
            raise CaffeNetError(
                f"{source}: layer '{node.name}' ({node.attrs.get('caffe_type', node.op)}) cannot take input of shape "
                f"{in_shapes} with weights {weight_shapes or 'none'}: {error}. The network input shape "
                f"{list(spec.inputs.values())} does not fit the caffemodel; check input_dim / input_shape in the "
                "prototxt or pass --input-shape"
            ) from error
        results = result if isinstance(result, tuple) else (result,)
        values.update(zip(node.outputs, results))
    return {name: [1, *value.shape[1:]] for name, value in values.items()}
