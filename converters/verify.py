"""Compare a converted model layer by layer with an independent implementation on random input.

References: OpenCV DNN 4.x for Caffe (``readNetFromCaffe``) and Torch7 (``readNetFromTorch``), and
onnxruntime for ONNX with graph optimizations off, so each ONNX node's output is that node's own result.
PyTorch and safetensors state dicts have no independent runtime: the file contains weights, and the
architecture comes from nstzoo's own layout tables.

The error of a layer is ``||ours - reference|| / ||reference||``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.errors import ConversionError
from converters.graph import GraphSpec
from converters.network import GraphNet
from converters.reference import opencv_caffe_outputs, relative_error

logger = logging.getLogger(__name__)

DEFAULT_SPATIAL = 64  # free height and width of a random input

# OpenCV layer types that each Torch7 graph op becomes in readNetFromTorch (OpenCV 4.x).
OPENCV_TORCH_TYPES = {
    "conv2d": {"Convolution"},
    "conv_transpose2d": {"Deconvolution"},
    "linear": {"InnerProduct"},
    "relu": {"ReLU"},
    "t7_activation": {"TanH", "Sigmoid"},
    "pool2d": {"Pooling"},
    "t7_pad": {"Padding"},
    "t7_batch_norm": {"BatchNorm"},
    "t7_instance_norm": {"BatchNorm"},
    "t7_mul_constant": {"Power"},
    "identity": {"Identity"},
    "dropout": {"Identity"},
    "concat": {"Concat"},
    "t7_add": {"Eltwise"},
    "t7_view": {"Reshape"},
}


class NoReferenceError(ConversionError):
    """The format has no independent implementation to compare against."""


@dataclass
class LayerError:
    """The relative error of one compared layer."""

    layer: str
    op: str
    shape: tuple[int, ...]
    relative_error: float


def random_inputs(spec: GraphSpec, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Return uniform [0, 1) float32 inputs for every graph input; free dimensions become 1 (batch) or 64.

    NOTE: every input is float32, so a model with integer inputs (token ids, say) cannot be verified here.
    """
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in spec.inputs.items():
        if input_shape and len(spec.inputs) == 1:
            shape = list(input_shape)
        filled = [size or (1 if axis == 0 else DEFAULT_SPATIAL) for axis, size in enumerate(shape)]
        if len(filled) == 4 and filled[1] == 0:
            filled[1] = 3
        inputs[name] = rng.random(filled, dtype=np.float32)
    return inputs


def _our_outputs(spec: GraphSpec, weights: dict[str, torch.Tensor], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    net = GraphNet(spec, weights)
    with torch.no_grad():
        values = net._run_values({name: torch.from_numpy(value) for name, value in inputs.items()})
    return {name: value.numpy() for name, value in values.items() if isinstance(value, torch.Tensor)}


def _compare(spec: GraphSpec, ours: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> list[LayerError]:
    errors = []
    for node in spec.nodes:
        reference = references.get(node.name)
        value = ours.get(node.outputs[0])
        if reference is None or value is None:
            continue
        if value.size != reference.size:
            logger.debug("layer %s: our shape %s, reference shape %s; not compared", node.name, value.shape, reference.shape)
            continue
        error = relative_error(value.reshape(-1), np.asarray(reference, dtype=np.float64).reshape(-1))
        errors.append(LayerError(node.name, node.attrs.get("op_type", node.op), tuple(value.shape), error))
    return errors


def verify_torch7(path: Path, spec: GraphSpec, weights: dict[str, torch.Tensor], inputs: dict[str, np.ndarray]) -> list[LayerError]:
    """Compare with OpenCV's ``readNetFromTorch``, matching layers in order by their OpenCV type."""
    import cv2

    try:
        net = cv2.dnn.readNetFromTorch(str(path))
    except cv2.error as error:
        raise ConversionError(f"OpenCV could not read {path} (it lacks some Torch7 modules, such as "
                              f"LeakyReLU and SpatialReplicationPadding): {str(error).strip().splitlines()[-1]}") from error
    net.enableFusion(False)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    layer_names = list(net.getLayerNames())
    layer_types = [net.getLayer(name).type for name in layer_names]
    matched: dict[str, str] = {}
    position = 0
    for node in spec.nodes:
        expected_types = OPENCV_TORCH_TYPES.get(node.op, set())
        # InstanceNormalization becomes MVN then BatchNorm in OpenCV; the BatchNorm is the node's output.
        for index in range(position, len(layer_names)):
            if layer_types[index] in expected_types:
                matched[node.name] = layer_names[index]
                position = index + 1
                break
    net.setInput(np.ascontiguousarray(next(iter(inputs.values()))))
    names = list(dict.fromkeys(matched.values()))
    outputs = dict(zip(names, net.forward(names))) if names else {}
    references = {node: outputs[layer] for node, layer in matched.items()}
    return _compare(spec, _our_outputs(spec, weights, inputs), references)


def verify_onnx(path: Path, spec: GraphSpec, weights: dict[str, torch.Tensor], inputs: dict[str, np.ndarray]) -> list[LayerError]:
    """Compare every node's output with onnxruntime's, all outputs exposed and optimizations off."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    output_names = [node.outputs[0] for node in spec.nodes]
    del model.graph.output[:]
    for name in output_names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = dict(zip(output_names, session.run(output_names, inputs)))
    references = {node.name: values[node.outputs[0]] for node in spec.nodes}
    return _compare(spec, _our_outputs(spec, weights, inputs), references)


def verify_caffe(path: Path, prototxt: Path, spec: GraphSpec, weights: dict[str, torch.Tensor],
                 inputs: dict[str, np.ndarray]) -> list[LayerError]:
    """Compare with OpenCV's ``readNetFromCaffe`` on the layers whose names both sides have."""
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(path))
    available = set(net.getLayerNames())
    names = [node.name for node in spec.nodes if node.name in available]
    input_name, x = next(iter(inputs.items()))
    references = opencv_caffe_outputs(prototxt, path, x, names)
    return _compare(spec, _our_outputs(spec, weights, inputs), references)


def verify(fmt: str, path: str | Path, spec: GraphSpec, weights: dict[str, torch.Tensor],
           options: Any = None, seed: int = 0) -> list[LayerError]:
    """Run the independent reference for ``fmt`` on random input and return each compared layer's error."""
    path = Path(path)
    input_shape = getattr(options, "input_shape", None)
    inputs = random_inputs(spec, input_shape, seed)
    if fmt == "torch7":
        return verify_torch7(path, spec, weights, inputs)
    if fmt == "onnx":
        return verify_onnx(path, spec, weights, inputs)
    if fmt == "caffe":
        prototxt = getattr(options, "prototxt", None)
        if prototxt is None:
            raise ConversionError("verifying a Caffe model needs its prototxt (--prototxt)")
        return verify_caffe(path, Path(prototxt), spec, weights, inputs)
    raise NoReferenceError(
        f"format '{fmt}' has no independent reference: a state dict contains weights only, and its architecture "
        "comes from nstzoo's layout tables, so there is nothing else to run it with"
    )
