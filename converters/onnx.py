"""ONNX models: the graph becomes ``onnx`` nodes (see ``converters.ops_onnx``) with float weights.

The converter reads the ONNX graph itself rather than running onnx2torch: onnx2torch 1.5.15 returns a
``torch.fx`` module of its own classes that the cache would have to pickle, and it rejects the
QuantizeLinear/DequantizeLinear pairs of quantized exports. Here every subgraph whose inputs are all
constant (initializers, Constant nodes, shape arithmetic, and the DequantizeLinear(QuantizeLinear(w)) or
DequantizeLinear(int8 w) chains of quantized weights) is evaluated once at conversion time, so the cache
stores plain float weights, and the remaining nodes run through PyTorch functions.

Node names are the ONNX node names, or the first output name where a node has none.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from converters.errors import ConversionError, UnsupportedLayerError
from converters.graph import GraphSpec, Node
from converters.ops_onnx import ONNX_FUNCTIONS, encode_attribute, run_onnx_function

logger = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")
UPGRADE_TARGET_OPSET = 17

# The oldest operator version (the schema's since_version) whose semantics ops_onnx implements. Older
# versions differ in ways the functions do not handle: BatchNormalization-7 has the `spatial` attribute and
# training outputs, Upsample-7 takes scales as an attribute and was replaced by Resize.
MIN_SINCE_VERSION = {
    "BatchNormalization": 9,
    "Upsample": 9,
    "Resize": 10,
    "Dropout": 7,
    "Pad": 2,
}
SUPPORTED_OPS = set(ONNX_FUNCTIONS)

# Names for constant inputs by position, so weight keys read like PyTorch's (conv1.weight).
INPUT_ROLES = {
    "Conv": ("x", "weight", "bias"),
    "ConvTranspose": ("x", "weight", "bias"),
    "BatchNormalization": ("x", "weight", "bias", "running_mean", "running_var"),
    "InstanceNormalization": ("x", "weight", "bias"),
    "Gemm": ("a", "weight", "bias"),
    "QuantizeLinear": ("x", "scale", "zero_point"),
    "DequantizeLinear": ("x", "scale", "zero_point"),
}


class OnnxUnsupportedError(UnsupportedLayerError):
    """ONNX nodes whose op (or op version) nstzoo cannot convert, all listed at once."""

    def __init__(self, problems: list[tuple[str, str, str]], source: str, opset: int, upgrade: bool) -> None:
        self.problems = problems
        self.opset = opset
        layers = [(name, op) for name, op, _ in problems]
        super().__init__(layers, source)
        lines = "\n".join(f"  - node '{name}': {op} {detail}" for name, op, detail in problems)
        message = f"{len(problems)} unsupported ONNX node(s) in {source} (model opset {opset}):\n{lines}"
        if upgrade:
            message += (
                "\nOlder op versions can often be upgraded with onnx.version_converter, for example:\n"
                "  python -c \"import onnx, onnx.version_converter as v; onnx.save(v.convert_version("
                f"onnx.load('{source}'), {UPGRADE_TARGET_OPSET}), 'upgraded.onnx')\""
            )
        self.args = (message,)

    def __str__(self) -> str:
        return self.args[0]


def model_opset(model: onnx.ModelProto) -> int:
    """Return the opset version of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return 1


def _since_version(op_type: str, opset: int) -> int | None:
    try:
        return int(onnx.defs.get_schema(op_type, opset, "").since_version)
    except onnx.defs.SchemaError:
        return None


def check_supported(model: onnx.ModelProto, source: str) -> None:
    """Raise ``OnnxUnsupportedError`` listing every node whose op or op version is not supported."""
    opset = model_opset(model)
    problems: list[tuple[str, str, str]] = []
    upgrade = False
    for index, node in enumerate(model.graph.node):
        name = node.name or (node.output[0] if node.output else f"#{index}")
        if node.domain not in DEFAULT_DOMAINS:
            problems.append((name, node.op_type, f"(domain '{node.domain}', which nstzoo does not convert)"))
            continue
        since = _since_version(node.op_type, opset)
        if node.op_type not in SUPPORTED_OPS:
            where = f"version {since}" if since else "unknown to onnx"
            problems.append((name, node.op_type, f"({where}, opset {opset}): no converter for this op"))
            continue
        minimum = MIN_SINCE_VERSION.get(node.op_type)
        if minimum is not None and since is not None and since < minimum:
            upgrade = True
            problems.append((name, node.op_type, f"(version {since}, opset {opset}): only version {minimum} and "
                                                  "later are supported"))
    if problems:
        raise OnnxUnsupportedError(problems, source, opset, upgrade)


def _attribute(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [item.decode("utf-8") for item in value]
    if isinstance(value, onnx.GraphProto) or (isinstance(value, list) and value and isinstance(value[0], onnx.GraphProto)):
        raise ConversionError(f"attribute {attribute.name} contains a subgraph (If/Loop), which nstzoo does not convert")
    return value


def _tensor(proto: onnx.TensorProto, base: Path) -> torch.Tensor:
    array = numpy_helper.to_array(proto, base_dir=str(base))
    return torch.from_numpy(np.array(array, copy=True))


@dataclass
class _Counts:
    folded_nodes: int = 0
    folded_quantization: int = 0
    runtime_quantization: int = 0


def _unique_name(requested: str, taken: set[str]) -> str:
    name, suffix = requested, 2
    while name in taken:
        name = f"{requested}_{suffix}"
        suffix += 1
    taken.add(name)
    return name


def _shape(value_info: onnx.ValueInfoProto) -> list[int]:
    dims = value_info.type.tensor_type.shape.dim
    return [int(dim.dim_value) if dim.HasField("dim_value") else 0 for dim in dims]


def convert_onnx(path: Path, options: Any) -> tuple[GraphSpec, dict[str, torch.Tensor]]:
    """Convert the ONNX model at ``path`` into a graph spec and weights."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise ConversionError(f"{path} is not a readable ONNX model: {error}") from error
    check_supported(model, str(path))
    graph = model.graph

    constants: dict[str, torch.Tensor] = {init.name: _tensor(init, path.parent) for init in graph.initializer}
    inputs = {info.name: _shape(info) for info in graph.input if info.name not in constants}
    if options.input_shape and len(inputs) == 1:
        inputs = {name: list(options.input_shape) for name in inputs}

    nodes: list[Node] = []
    weights: dict[str, torch.Tensor] = {}
    taken: set[str] = set()
    counts = _Counts()
    for index, onnx_node in enumerate(graph.node):
        attributes = {attribute.name: _attribute(attribute) for attribute in onnx_node.attribute}
        names = [name for name in onnx_node.input if name]
        if all(name in constants for name in names):
            _fold(onnx_node, attributes, constants, counts)
            continue
        node_name = _unique_name(onnx_node.name or onnx_node.output[0] or f"node{index}", taken)
        nodes.append(_runtime_node(onnx_node, node_name, attributes, constants, weights))
        if onnx_node.op_type == "QuantizeLinear":
            counts.runtime_quantization += 1

    missing = [output.name for output in graph.output if output.name in constants]
    if missing:
        raise ConversionError(f"{path}: graph outputs {missing} are constants; there is nothing to run")
    if counts.folded_quantization:
        logger.info("%s: folded %d QuantizeLinear/DequantizeLinear nodes on weights into float weights",
                    path.name, counts.folded_quantization)
    if counts.runtime_quantization:
        logger.info("%s: %d activations keep their QuantizeLinear/DequantizeLinear rounding (as fake "
                    "quantization with a straight-through gradient)", path.name, counts.runtime_quantization)
    spec = GraphSpec(
        nodes=nodes,
        inputs=inputs,
        outputs=[output.name for output in graph.output],
        metadata={"source_format": "onnx", "source_file": path.name, "opset": model_opset(model),
                  "producer": f"{model.producer_name} {model.producer_version}".strip(),
                  "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
    )
    spec.validate()
    logger.info("converted %s: %d nodes (%d constant nodes folded)", path.name, len(nodes), counts.folded_nodes)
    return spec, weights


def _fold(onnx_node: onnx.NodeProto, attributes: dict[str, Any], constants: dict[str, torch.Tensor],
          counts: _Counts) -> None:
    """Evaluate a node whose inputs are all constants and store its outputs as constants."""
    values = [constants[name] if name else None for name in onnx_node.input]
    try:
        outputs = run_onnx_function(onnx_node.op_type, attributes, values)
    except Exception as error:  # noqa: BLE001 - name the node whatever the function raised
        raise ConversionError(f"folding constant node '{onnx_node.name}' ({onnx_node.op_type}) failed: {error}") from error
    for name, value in zip(onnx_node.output, outputs):
        if name:
            constants[name] = value
    counts.folded_nodes += 1
    if onnx_node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        counts.folded_quantization += 1


def _runtime_node(onnx_node: onnx.NodeProto, node_name: str, attributes: dict[str, Any],
                  constants: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> Node:
    """Return the graph node for an ONNX node with at least one runtime input."""
    roles = INPUT_ROLES.get(onnx_node.op_type, ())
    slots: list[dict[str, Any] | None] = []
    runtime_inputs: list[str] = []
    for position, name in enumerate(onnx_node.input):
        if not name:
            slots.append(None)
        elif name in constants:
            role = roles[position] if position < len(roles) else f"input{position}"
            weights[f"{node_name}.{role}"] = constants[name]
            slots.append({"weight": role})
        else:
            slots.append({"value": len(runtime_inputs)})
            runtime_inputs.append(name)
    attrs = {
        "op_type": onnx_node.op_type,
        "attributes": {key: encode_attribute(value) for key, value in attributes.items()},
        "slots": slots,
    }
    # Every ops_onnx function returns one tensor; optional extra outputs (Dropout's mask) are not produced.
    return Node(node_name, "onnx", runtime_inputs, [onnx_node.output[0]], attrs)
