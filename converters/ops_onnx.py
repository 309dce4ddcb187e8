"""The ``onnx`` graph op: one ONNX node, run with PyTorch functions.

A node's attrs contain the ONNX ``op_type``, its ``attributes`` as plain JSON, and ``slots``: one entry per
ONNX input, either ``{"value": i}`` (the node's i-th graph input), ``{"weight": name}`` (a constant stored
in the weights file) or ``null`` (an omitted optional input). The same functions fold constant subgraphs
at conversion time, so the converter and the runtime cannot disagree.

Semantics follow the ONNX operator specification (https://onnx.ai/onnx/operators/) for the versions that
``converters.onnx.SUPPORTED_OPS`` accepts.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from converters.errors import ConversionError, GraphSpecError
from converters.ops import register_op

Tensor = torch.Tensor
OnnxFunction = Callable[[dict[str, Any], list[Any]], Any]
ONNX_FUNCTIONS: dict[str, OnnxFunction] = {}

# ONNX TensorProto data types, as integers in Cast's ``to`` and ConstantOfShape's value.
ONNX_DTYPES = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}
INTEGER_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767)}


def onnx_function(*op_types: str) -> Callable[[OnnxFunction], OnnxFunction]:
    """Register a function for ONNX ``op_types``; it takes (attributes, inputs) and returns the outputs."""

    def decorate(function: OnnxFunction) -> OnnxFunction:
        for op_type in op_types:
            ONNX_FUNCTIONS[op_type] = function
        return function

    return decorate


def run_onnx_function(op_type: str, attributes: dict[str, Any], inputs: list[Any]) -> tuple[Any, ...]:
    """Run ``op_type`` and return its outputs as a tuple."""
    try:
        function = ONNX_FUNCTIONS[op_type]
    except KeyError:
        raise GraphSpecError(f"ONNX op {op_type} has no implementation in nstzoo") from None
    result = function(attributes, inputs)
    return result if isinstance(result, tuple) else (result,)


def _ints(value: Any) -> list[int]:
    if isinstance(value, Tensor):
        return [int(item) for item in value.reshape(-1).tolist()]
    return [int(item) for item in value]


def _input(inputs: list[Any], index: int) -> Any:
    return inputs[index] if index < len(inputs) else None


def _axes(attributes: dict[str, Any], inputs: list[Any], index: int) -> list[int] | None:
    """Return axes from the attribute (older opsets) or from input ``index`` (newer opsets)."""
    if "axes" in attributes:
        return [int(axis) for axis in attributes["axes"]]
    value = _input(inputs, index)
    return None if value is None else _ints(value)


# --- convolution and pooling ------------------------------------------------------------------------


def _auto_pads(attributes: dict[str, Any], x: Tensor, kernel: list[int], strides: list[int],
               dilations: list[int]) -> list[int]:
    """Return ONNX pads [top, left, bottom, right] for 2-D ``x``, resolving ``auto_pad``.

    SAME_UPPER puts the odd extra pixel at the end (bottom, right) and SAME_LOWER at the start.
    """
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return list(attributes.get("pads", [0] * (2 * len(kernel))))
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    begins, ends = [], []
    for axis, size in enumerate(x.shape[2:]):
        output = math.ceil(size / strides[axis])
        total = max((output - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _torch_pads(onnx_pads: list[int]) -> tuple[list[int], bool]:
    """Turn ONNX [x1_begin, x2_begin, x1_end, x2_end] into F.pad order (last axis first)."""
    half = len(onnx_pads) // 2
    pads: list[int] = []
    for axis in reversed(range(half)):
        pads += [onnx_pads[axis], onnx_pads[axis + half]]
    symmetric = all(onnx_pads[axis] == onnx_pads[axis + half] for axis in range(half))
    return pads, symmetric


@onnx_function("Conv")
def conv(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, weight, bias = inputs[0], inputs[1], _input(inputs, 2)
    kernel = list(weight.shape[2:])
    strides = list(attributes.get("strides", [1] * len(kernel)))
    dilations = list(attributes.get("dilations", [1] * len(kernel)))
    onnx_pads = _auto_pads(attributes, x, kernel, strides, dilations)
    pads, symmetric = _torch_pads(onnx_pads)
    padding = onnx_pads[: len(kernel)]
    if not symmetric:
        x = F.pad(x, pads)
        padding = [0] * len(kernel)
    function = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    return function(x, weight, bias, strides, padding, dilations, int(attributes.get("group", 1)))


@onnx_function("ConvTranspose")
def conv_transpose(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, weight, bias = inputs[0], inputs[1], _input(inputs, 2)
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in attributes:
        raise GraphSpecError("ConvTranspose with auto_pad or output_shape is not supported; export with explicit pads")
    kernel = len(weight.shape) - 2
    pads = list(attributes.get("pads", [0] * (2 * kernel)))
    if pads[:kernel] != pads[kernel:]:
        raise GraphSpecError(f"ConvTranspose with asymmetric pads {pads} is not supported")
    function = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[kernel]
    return function(x, weight, bias, list(attributes.get("strides", [1] * kernel)), pads[:kernel],
                    list(attributes.get("output_padding", [0] * kernel)), int(attributes.get("group", 1)),
                    list(attributes.get("dilations", [1] * kernel)))


def _pool(attributes: dict[str, Any], x: Tensor, mode: str) -> Tensor:
    kernel = list(attributes["kernel_shape"])
    if len(kernel) != 2:
        raise GraphSpecError(f"only 2-D pooling is supported, got kernel_shape {kernel}")
    strides = list(attributes.get("strides", [1, 1]))
    dilations = list(attributes.get("dilations", [1, 1]))
    ceil_mode = bool(attributes.get("ceil_mode", 0))
    onnx_pads = _auto_pads(attributes, x, kernel, strides, dilations)
    pads, symmetric = _torch_pads(onnx_pads)
    fits = symmetric and all(onnx_pads[axis] * 2 <= kernel[axis] for axis in range(2))
    if mode == "max":
        if fits:
            return F.max_pool2d(x, kernel, strides, onnx_pads[:2], dilations, ceil_mode)
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, strides, 0, dilations, ceil_mode)
    include_pad = bool(attributes.get("count_include_pad", 0))
    if fits:
        return F.avg_pool2d(x, kernel, strides, onnx_pads[:2], ceil_mode, include_pad)
    if ceil_mode:
        raise GraphSpecError("AveragePool with ceil_mode and asymmetric pads is not supported")
    sums = F.avg_pool2d(F.pad(x, pads), kernel, strides, 0, False, True, divisor_override=1)
    if include_pad:
        return sums / (kernel[0] * kernel[1])
    ones = F.pad(torch.ones_like(x[:1, :1]), pads)
    counts = F.avg_pool2d(ones, kernel, strides, 0, False, True, divisor_override=1)
    return sums / counts


@onnx_function("MaxPool")
def max_pool(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return _pool(attributes, inputs[0], "max")


@onnx_function("AveragePool")
def average_pool(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return _pool(attributes, inputs[0], "avg")


@onnx_function("GlobalAveragePool")
def global_average_pool(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@onnx_function("GlobalMaxPool")
def global_max_pool(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


# --- normalization and dense layers -----------------------------------------------------------------


@onnx_function("BatchNormalization")
def batch_normalization(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, scale, bias, mean, variance = inputs[:5]
    return F.batch_norm(x, mean, variance, scale, bias, False, 0.0, float(attributes.get("epsilon", 1e-5)))


@onnx_function("InstanceNormalization")
def instance_normalization(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, scale, bias = inputs[:3]
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(attributes.get("epsilon", 1e-5)))


@onnx_function("Gemm")
def gemm(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    a, b, c = inputs[0], inputs[1], _input(inputs, 2)
    if attributes.get("transA", 0):
        a = a.transpose(0, 1)
    if attributes.get("transB", 0):
        b = b.transpose(0, 1)
    result = float(attributes.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        result = result + float(attributes.get("beta", 1.0)) * c
    return result


@onnx_function("MatMul")
def matmul(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return torch.matmul(inputs[0], inputs[1])


# --- element-wise -----------------------------------------------------------------------------------

BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Max": torch.maximum, "Min": torch.minimum, "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt,
}


def _binary(op_type: str) -> OnnxFunction:
    function = BINARY[op_type]

    def run(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
        return function(inputs[0], inputs[1])

    return run


for _op_type in BINARY:
    onnx_function(_op_type)(_binary(_op_type))


@onnx_function("Div")
def div(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    a, b = inputs
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # integer division truncates in ONNX
    return a / b


@onnx_function("Sum")
def sum_inputs(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    total = inputs[0]
    for x in inputs[1:]:
        total = total + x
    return total


UNARY = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Sqrt": torch.sqrt, "Exp": torch.exp,
    "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Erf": torch.erf,
    "Floor": torch.floor, "Ceil": torch.ceil, "Identity": lambda x: x, "Softplus": F.softplus,
}


def _unary(op_type: str) -> OnnxFunction:
    function = UNARY[op_type]

    def run(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
        return function(inputs[0])

    return run


for _op_type in UNARY:
    onnx_function(_op_type)(_unary(_op_type))


@onnx_function("LeakyRelu")
def leaky_relu(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return F.leaky_relu(inputs[0], float(attributes.get("alpha", 0.01)))


@onnx_function("Elu")
def elu(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return F.elu(inputs[0], float(attributes.get("alpha", 1.0)))


@onnx_function("HardSigmoid")
def hard_sigmoid(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    alpha, beta = float(attributes.get("alpha", 0.2)), float(attributes.get("beta", 0.5))
    return torch.clamp(alpha * inputs[0] + beta, 0.0, 1.0)


@onnx_function("Clip")
def clip(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    low = attributes.get("min", _input(inputs, 1))
    high = attributes.get("max", _input(inputs, 2))
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return torch.clamp(inputs[0], low, high)


@onnx_function("Softmax")
def softmax(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return F.softmax(inputs[0], dim=int(attributes.get("axis", -1)))


@onnx_function("Dropout")
def dropout(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return inputs[0]


# --- reductions -------------------------------------------------------------------------------------


def _reduce(function: Callable[..., Tensor]) -> OnnxFunction:
    def run(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
        x = inputs[0]
        axes = _axes(attributes, inputs, 1)
        keep = bool(attributes.get("keepdims", 1))
        if not axes:
            if attributes.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return function(x, dim=tuple(axes), keepdim=keep)

    return run


onnx_function("ReduceMean")(_reduce(torch.mean))
onnx_function("ReduceSum")(_reduce(torch.sum))
onnx_function("ReduceMax")(_reduce(torch.amax))
onnx_function("ReduceMin")(_reduce(torch.amin))


# --- shapes -----------------------------------------------------------------------------------------


@onnx_function("Reshape")
def reshape(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    if not attributes.get("allowzero", 0):
        shape = [x.shape[axis] if size == 0 else size for axis, size in enumerate(shape)]
    return x.reshape(shape)


@onnx_function("Flatten")
def flatten(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    axis = int(attributes.get("axis", 1))
    if axis < 0:
        axis += x.dim()
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


@onnx_function("Transpose")
def transpose(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    perm = attributes.get("perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


@onnx_function("Squeeze")
def squeeze(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    axes = _axes(attributes, inputs, 1)
    if axes is None:
        return x.squeeze()
    for axis in sorted((axis % x.dim() for axis in axes), reverse=True):
        x = x.squeeze(axis)
    return x


@onnx_function("Unsqueeze")
def unsqueeze(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    axes = _axes(attributes, inputs, 1) or []
    rank = x.dim() + len(axes)
    for axis in sorted(axis % rank for axis in axes):
        x = x.unsqueeze(axis)
    return x


@onnx_function("Concat")
def concat(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return torch.cat([x for x in inputs if x is not None and x.numel() > 0] or inputs[:1], dim=int(attributes["axis"]))


@onnx_function("Shape")
def shape(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    sizes = list(inputs[0].shape)
    start, end = int(attributes.get("start", 0)), attributes.get("end")
    return torch.tensor(sizes[start:end if end is None else int(end)], dtype=torch.int64)


@onnx_function("Gather")
def gather(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, indices = inputs
    axis = int(attributes.get("axis", 0)) % x.dim()
    indices = indices.long()
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    result = torch.index_select(x, axis, indices.reshape(-1))
    return result.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


@onnx_function("Slice")
def slice_tensor(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    if "starts" in attributes:  # opset 1-9 keep these as attributes
        starts, ends = list(attributes["starts"]), list(attributes["ends"])
        axes, steps = list(attributes.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if _input(inputs, 3) is not None else list(range(len(starts)))
        steps = _ints(inputs[4]) if _input(inputs, 4) is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            start = max(0, min(size, start + size if start < 0 else start))
            end = max(0, min(size, end + size if end < 0 else end))
            index[axis] = slice(start, end, step)
        else:
            # Negative steps: PyTorch slices only forwards, so flip the axis and slice that.
            start = max(-1, min(size - 1, start + size if start < 0 else start))
            end = max(-1, min(size - 1, end + size if end < 0 else end))
            index[axis] = slice(size - 1 - start, size - 1 - end, -step)
            flips.append(axis)
    if flips:
        x = torch.flip(x, flips)
    return x[tuple(index)]


@onnx_function("Cast")
def cast(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    to = int(attributes["to"])
    if to not in ONNX_DTYPES:
        raise GraphSpecError(f"Cast to ONNX data type {to} is not supported")
    return inputs[0].to(ONNX_DTYPES[to])


@onnx_function("Constant")
def constant(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    return attributes["value"]


@onnx_function("ConstantOfShape")
def constant_of_shape(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    value = attributes.get("value", torch.zeros(1))
    return torch.full(_ints(inputs[0]), value.reshape(-1)[0].item(), dtype=value.dtype)


@onnx_function("Pad")
def pad(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    onnx_pads = list(attributes["pads"]) if "pads" in attributes else _ints(inputs[1])
    value_input = _input(inputs, 2)
    value = float(attributes.get("value", 0.0)) if value_input is None else float(value_input.reshape(-1)[0])
    axes = _axes({}, inputs, 3) if len(inputs) > 3 else None
    if axes is not None:
        full = [0] * (2 * x.dim())
        for position, axis in enumerate(axes):
            full[axis % x.dim()] = onnx_pads[position]
            full[axis % x.dim() + x.dim()] = onnx_pads[position + len(axes)]
        onnx_pads = full
    mode = attributes.get("mode", "constant")
    torch_pads, _ = _torch_pads(onnx_pads)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # reflect and edge modes of F.pad accept only the trailing axes
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    modes = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise GraphSpecError(f"Pad mode {mode!r} is not supported")
    return F.pad(x, torch_pads, mode=modes[mode])


# --- resizing ---------------------------------------------------------------------------------------


def _source_coordinates(mode: str, output: int, input_size: int, scale: float) -> Tensor:
    positions = torch.arange(output, dtype=torch.float64)
    if mode == "asymmetric":
        return positions / scale
    if mode == "half_pixel":
        return (positions + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (positions + 0.5) / scale - 0.5 if output > 1 else torch.zeros(output, dtype=torch.float64)
    if mode == "align_corners":
        return positions * (input_size - 1) / (output - 1) if output > 1 else torch.zeros(output, dtype=torch.float64)
    raise GraphSpecError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(rule: str, coordinates: Tensor, input_size: int) -> Tensor:
    if rule == "floor":
        index = torch.floor(coordinates)
    elif rule == "ceil":
        index = torch.ceil(coordinates)
    elif rule == "round_prefer_ceil":
        index = torch.floor(coordinates + 0.5)
    else:  # round_prefer_floor, the default
        index = torch.ceil(coordinates - 0.5)
    return index.clamp(0, input_size - 1).long()


@onnx_function("Resize", "Upsample")
def resize(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x = inputs[0]
    scales_input = _input(inputs, 2) if len(inputs) > 2 else _input(inputs, 1)
    sizes_input = _input(inputs, 3)
    if "scales" in attributes:
        scales_input = torch.tensor(attributes["scales"])
    from_sizes = sizes_input is not None and sizes_input.numel() > 0
    if from_sizes:
        sizes = _ints(sizes_input)
        scales = [out / size for out, size in zip(sizes, x.shape)]
    elif scales_input is not None and scales_input.numel() > 0:
        scales = [float(value) for value in scales_input.reshape(-1).tolist()]
        sizes = [int(math.floor(size * scale)) for size, scale in zip(x.shape, scales)]
    else:
        raise GraphSpecError("Resize needs scales or sizes")
    if scales[0] != 1 or scales[1] != 1 or x.dim() != 4:
        raise GraphSpecError(f"Resize only scales the last two axes of a 4-D tensor, got scales {scales}")
    mode = attributes.get("mode", "nearest")
    transform = attributes.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest":
        rule = attributes.get("nearest_mode", "round_prefer_floor")
        rows = _nearest_index(rule, _source_coordinates(transform, sizes[2], x.shape[2], scales[2]), x.shape[2])
        columns = _nearest_index(rule, _source_coordinates(transform, sizes[3], x.shape[3], scales[3]), x.shape[3])
        return x.index_select(2, rows.to(x.device)).index_select(3, columns.to(x.device))
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        align_corners = transform == "align_corners"
        if from_sizes or align_corners:
            return F.interpolate(x, size=sizes[2:], mode="bilinear", align_corners=align_corners)
        # Given scales, ONNX maps coordinates with the scale itself, not with output size / input size.
        return F.interpolate(x, scale_factor=scales[2:], mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)
    raise GraphSpecError(f"Resize mode {mode!r} with {transform!r} coordinates is not supported")


# --- quantization -----------------------------------------------------------------------------------


def _per_axis(parameter: Tensor, x: Tensor, axis: int) -> Tensor:
    if parameter.dim() == 0 or parameter.numel() == 1:
        return parameter.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = parameter.numel()
    return parameter.reshape(shape)


@onnx_function("QuantizeLinear")
def quantize_linear(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    """Quantize to the integer grid but keep a float tensor, with a straight-through gradient.

    The values equal ONNX's saturate(round_half_even(x / scale) + zero_point). Keeping the float type lets
    gradients reach the input (quantization-aware training's straight-through estimator), which the style
    engine needs. The integer range comes from the zero point's type (uint8 when it is omitted).
    """
    x, scale, zero_point = inputs[0], inputs[1], _input(inputs, 2)
    axis = int(attributes.get("axis", 1))
    integer_type = zero_point.dtype if zero_point is not None else torch.uint8
    low, high = INTEGER_RANGES.get(integer_type, (-128, 127))
    scale_view = _per_axis(scale.float(), x, axis)
    zero_view = _per_axis(zero_point.float(), x, axis) if zero_point is not None else 0.0
    scaled = x.float() / scale_view
    quantized = torch.clamp(torch.round(scaled) + zero_view, low, high)
    if x.requires_grad:
        quantized = scaled + zero_view + (quantized - scaled - zero_view).detach()
    return quantized


@onnx_function("DequantizeLinear")
def dequantize_linear(attributes: dict[str, Any], inputs: list[Any]) -> Tensor:
    x, scale, zero_point = inputs[0], inputs[1], _input(inputs, 2)
    axis = int(attributes.get("axis", 1))
    zero_view = _per_axis(zero_point.float(), x, axis) if zero_point is not None else 0.0
    return (x.float() - zero_view) * _per_axis(scale.float(), x, axis)


# --- the graph op -----------------------------------------------------------------------------------


@register_op("onnx")
class OnnxNode(nn.Module):
    """One ONNX node; attrs ``op_type``, ``attributes`` and ``slots`` (see the module docstring)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, Tensor]) -> None:
        super().__init__()
        self.op_type = attrs["op_type"]
        if self.op_type not in ONNX_FUNCTIONS:
            raise GraphSpecError(f"ONNX op {self.op_type} has no implementation in nstzoo")
        self.attributes = decode_attributes(attrs.get("attributes", {}))
        self.slots = attrs["slots"]
        for slot in self.slots:
            if slot and "weight" in slot:
                name = slot["weight"]
                if name not in weights:
                    raise GraphSpecError(f"ONNX node {self.op_type} needs weight '{name}', which is missing")
                self.register_buffer(name, weights[name].detach().clone())

    def forward(self, *values: Tensor) -> Tensor | tuple[Tensor, ...]:
        inputs: list[Any] = []
        for slot in self.slots:
            if slot is None:
                inputs.append(None)
            elif "value" in slot:
                inputs.append(values[slot["value"]])
            else:
                inputs.append(getattr(self, slot["weight"]))
        outputs = run_onnx_function(self.op_type, self.attributes, inputs)
        return outputs[0] if len(outputs) == 1 else outputs


def encode_attribute(value: Any) -> Any:
    """Return ``value`` as JSON: tensors become {"tensor": nested list, "dtype": name}."""
    if isinstance(value, Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [encode_attribute(item) for item in value]
    return value


def decode_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Invert ``encode_attribute`` for every attribute."""
    decoded = {}
    for key, value in attributes.items():
        if isinstance(value, dict) and "tensor" in value:
            dtype = getattr(torch, value["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise ConversionError(f"attribute {key} has an unknown tensor type {value['dtype']!r}")
            decoded[key] = torch.tensor(value["tensor"], dtype=dtype)
        else:
            decoded[key] = value
    return decoded
