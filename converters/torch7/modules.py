"""Translation of Torch7 ``nn`` (and ``cudnn``) module trees into graph nodes.

Node names are module paths from the root container: the root's third child is ``3``, that child's first
child is ``3.1``. Containers emit no node of their own, except ``nn.Concat``, whose concatenation is
named after the container.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from converters.errors import ConversionError
from converters.graph import Node
from converters.torch7.reader import T7Object, T7Storage, T7Table

logger = logging.getLogger(__name__)

# cudnn modules have the fields of their nn counterparts; inn (imagine-nn) is a third prefix seen in old files.
CLASS_PREFIXES = ("nn.", "cudnn.", "inn.")


def short_class_name(class_name: str) -> str:
    """Return ``SpatialConvolution`` for ``nn.SpatialConvolution`` and ``cudnn.SpatialConvolution``."""
    for prefix in CLASS_PREFIXES:
        if class_name.startswith(prefix):
            return class_name[len(prefix):]
    return class_name


def _number(module: T7Object, name: str, default: float | None = None) -> float:
    value = module.field(name, default)
    if value is None:
        raise ConversionError(f"{module.class_name} has no field '{name}'")
    return value


def _int(module: T7Object, name: str, default: int | None = None) -> int:
    return int(_number(module, name, default))


def _tensor(module: T7Object, name: str) -> torch.Tensor | None:
    value = module.field(name)
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        raise ConversionError(f"{module.class_name}.{name} is a {type(value).__name__}, not a tensor")
    return torch.from_numpy(np.ascontiguousarray(value)).float()


@dataclass
class GraphBuilder:
    """Collects nodes and weights while walking a module tree."""

    nodes: list[Node] = field(default_factory=list)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    unsupported: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, op: str, inputs: list[str], attrs: dict[str, Any] | None = None,
            weights: dict[str, torch.Tensor | None] | None = None) -> str:
        """Add a node named ``path`` whose single output is also named ``path``; return that value name."""
        self.nodes.append(Node(path, op, list(inputs), [path], attrs or {}))
        for key, tensor in (weights or {}).items():
            if tensor is not None:
                self.weights[f"{path}.{key}"] = tensor
        return path

    def walk(self, module: Any, inputs: list[str], path: str) -> list[str]:
        """Translate ``module`` applied to ``inputs`` (one value, or a Lua table of values); return its outputs."""
        if not isinstance(module, T7Object):
            raise ConversionError(f"module {path or '(root)'} is a {type(module).__name__}, not a Torch7 module")
        name = short_class_name(module.class_name)
        handler = MODULE_HANDLERS.get(name)
        if handler is None:
            self.unsupported.append((path or "(root)", module.class_name))
            return inputs
        return handler(self, module, inputs, path)


def _children(module: T7Object) -> list[T7Object]:
    modules = module.field("modules")
    if modules is None:
        return []
    if not isinstance(modules, T7Table):
        raise ConversionError(f"{module.class_name}.modules is a {type(modules).__name__}, not a table")
    return modules.sequence()


def _child_path(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


def _single(inputs: list[str], module: T7Object, path: str) -> str:
    if len(inputs) != 1:
        raise ConversionError(f"module {path} ({module.class_name}) takes one tensor, but receives a table of "
                              f"{len(inputs)}")
    return inputs[0]


# --- containers -------------------------------------------------------------------------------------


def _sequential(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    values = inputs
    for index, child in enumerate(_children(module), start=1):
        values = builder.walk(child, values, _child_path(path, index))
    return values


def _concat_table(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    outputs: list[str] = []
    for index, child in enumerate(_children(module), start=1):
        outputs.extend(builder.walk(child, inputs, _child_path(path, index)))
    return outputs


def _concat(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    branches = _concat_table(builder, module, inputs, path)
    # Torch dimensions count from 1; style networks run in batch mode, where dimension 2 is the channel.
    axis = _int(module, "dimension") - 1
    return [builder.add(path or "concat", "concat", branches, {"axis": axis})]


def _join_table(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    axis = _int(module, "dimension") - 1
    input_dims = module.field("nInputDims")
    if input_dims:
        axis += 1  # with nInputDims set, the dimension counts from the item, not from the batch
    return [builder.add(path, "concat", inputs, {"axis": axis})]


def _cadd_table(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    return [builder.add(path, "t7_add", inputs)]


# --- layers with weights ----------------------------------------------------------------------------


def _convolution(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    weight = _tensor(module, "weight")
    if weight is None:
        raise ConversionError(f"module {path} ({module.class_name}) has no weight")
    k_h, k_w = _int(module, "kH"), _int(module, "kW")
    groups = _int(module, "groups", 1)
    n_out = _int(module, "nOutputPlane", weight.shape[0])
    n_in = _int(module, "nInputPlane", 0) or weight.numel() // (n_out * k_h * k_w) * groups
    # SpatialConvolutionMM stores a 2-D (nOut, nIn*kH*kW) weight; the kernel is (kH, kW), not (kW, kH).
    weight = weight.reshape(n_out, n_in // groups, k_h, k_w)
    attrs = {
        "stride": [_int(module, "dH", 1), _int(module, "dW", 1)],
        "padding": [_int(module, "padH", 0), _int(module, "padW", 0)],
        "dilation": [_int(module, "dilationH", 1), _int(module, "dilationW", 1)],
        "groups": groups,
    }
    return [builder.add(path, "conv2d", [_single(inputs, module, path)], attrs,
                        {"weight": weight, "bias": _tensor(module, "bias")})]


def _full_convolution(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    weight = _tensor(module, "weight")
    if weight is None:
        raise ConversionError(f"module {path} ({module.class_name}) has no weight")
    weight = weight.reshape(_int(module, "nInputPlane"), _int(module, "nOutputPlane"), _int(module, "kH"), _int(module, "kW"))
    attrs = {
        "stride": [_int(module, "dH", 1), _int(module, "dW", 1)],
        "padding": [_int(module, "padH", 0), _int(module, "padW", 0)],
        "output_padding": [_int(module, "adjH", 0), _int(module, "adjW", 0)],
    }
    return [builder.add(path, "conv_transpose2d", [_single(inputs, module, path)], attrs,
                        {"weight": weight, "bias": _tensor(module, "bias")})]


def _linear(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    return [builder.add(path, "linear", [_single(inputs, module, path)], {"axis": 1},
                        {"weight": _tensor(module, "weight"), "bias": _tensor(module, "bias")})]


def _batch_norm(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    mean = _tensor(module, "running_mean")
    variance = _tensor(module, "running_var")
    eps = float(_number(module, "eps", 1e-5))
    if variance is None:
        # nn before 2016 stored running_std = 1 / sqrt(var + eps) instead of the variance.
        std = _tensor(module, "running_std")
        if std is None or mean is None:
            raise ConversionError(f"module {path} ({module.class_name}) has no running statistics")
        variance = 1.0 / (std * std) - eps
    weights = {"running_mean": mean, "running_var": variance,
               "weight": _tensor(module, "weight"), "bias": _tensor(module, "bias")}
    return [builder.add(path, "t7_batch_norm", [_single(inputs, module, path)], {"eps": eps}, weights)]


def _instance_norm(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    weights = {"weight": _tensor(module, "weight"), "bias": _tensor(module, "bias")}
    return [builder.add(path, "t7_instance_norm", [_single(inputs, module, path)],
                        {"eps": float(_number(module, "eps", 1e-5))}, weights)]


# --- pooling, padding and shape ---------------------------------------------------------------------


def _pooling(mode: str) -> Callable[[GraphBuilder, T7Object, list[str], str], list[str]]:
    def translate(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
        attrs = {
            "mode": mode,
            "kernel": [_int(module, "kH"), _int(module, "kW")],
            "stride": [_int(module, "dH", 1), _int(module, "dW", 1)],
            "padding": [_int(module, "padH", 0), _int(module, "padW", 0)],
            # The rounding is a field of the object (set by :ceil()), never a property of the class.
            "ceil_mode": bool(module.field("ceil_mode", False)),
        }
        if mode == "avg":
            attrs["count_include_pad"] = bool(module.field("count_include_pad", True))
            if module.field("divide", True) is False:
                raise ConversionError(f"module {path} ({module.class_name}) sums instead of averaging "
                                      "(divide = false), which nstzoo does not convert")
        return [builder.add(path, "pool2d", [_single(inputs, module, path)], attrs)]

    return translate


def _padding(mode: str) -> Callable[[GraphBuilder, T7Object, list[str], str], list[str]]:
    def translate(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
        pads = [_int(module, "pad_l", 0), _int(module, "pad_r", 0), _int(module, "pad_t", 0), _int(module, "pad_b", 0)]
        return [builder.add(path, "t7_pad", [_single(inputs, module, path)], {"mode": mode, "pads": pads})]

    return translate


def _view(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    size = module.field("size")
    if isinstance(size, T7Storage):
        shape = [int(value) for value in size.data]
    elif isinstance(size, np.ndarray):
        shape = [int(value) for value in size.reshape(-1)]
    else:
        raise ConversionError(f"module {path} ({module.class_name}) has no size")
    return [builder.add(path, "t7_view", [_single(inputs, module, path)], {"shape": shape})]


def _upsampling_nearest(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    return [builder.add(path, "t7_upsample_nearest", [_single(inputs, module, path)],
                        {"scale": _int(module, "scale_factor")})]


# --- element-wise -----------------------------------------------------------------------------------


def _threshold(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    threshold = float(_number(module, "threshold", 0.0))
    value = float(_number(module, "val", 0.0))
    source = [_single(inputs, module, path)]
    if threshold == 0.0 and value == 0.0:
        return [builder.add(path, "relu", source)]
    return [builder.add(path, "t7_threshold", source, {"threshold": threshold, "value": value})]


def _leaky_relu(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    slope = float(_number(module, "negval", 0.01))
    return [builder.add(path, "relu", [_single(inputs, module, path)], {"negative_slope": slope})]


def _activation(function: str) -> Callable[[GraphBuilder, T7Object, list[str], str], list[str]]:
    def translate(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
        return [builder.add(path, "t7_activation", [_single(inputs, module, path)], {"function": function})]

    return translate


def _plain(op: str) -> Callable[[GraphBuilder, T7Object, list[str], str], list[str]]:
    def translate(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
        return [builder.add(path, op, [_single(inputs, module, path)])]

    return translate


def _mul_constant(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    return [builder.add(path, "t7_mul_constant", [_single(inputs, module, path)],
                        {"constant": float(_number(module, "constant_scalar"))})]


def _identity(builder: GraphBuilder, module: T7Object, inputs: list[str], path: str) -> list[str]:
    if len(inputs) == 1:
        return [builder.add(path, "identity", inputs)]
    return inputs  # Identity passes a table through unchanged


MODULE_HANDLERS: dict[str, Callable[[GraphBuilder, T7Object, list[str], str], list[str]]] = {
    "Sequential": _sequential,
    "Concat": _concat,
    "ConcatTable": _concat_table,
    "JoinTable": _join_table,
    "CAddTable": _cadd_table,
    "SpatialConvolution": _convolution,
    "SpatialConvolutionMM": _convolution,
    "SpatialDilatedConvolution": _convolution,
    "SpatialFullConvolution": _full_convolution,
    "Linear": _linear,
    "SpatialBatchNormalization": _batch_norm,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "SpatialMaxPooling": _pooling("max"),
    "SpatialAveragePooling": _pooling("avg"),
    "SpatialZeroPadding": _padding("zero"),
    "SpatialReflectionPadding": _padding("reflection"),
    "SpatialReplicationPadding": _padding("replication"),
    "View": _view,
    "Reshape": _view,
    "SpatialUpSamplingNearest": _upsampling_nearest,
    "ReLU": _threshold,
    "Threshold": _threshold,
    "LeakyReLU": _leaky_relu,
    "Tanh": _activation("tanh"),
    "Sigmoid": _activation("sigmoid"),
    "Dropout": _plain("dropout"),
    "SpatialDropout": _plain("dropout"),
    "MulConstant": _mul_constant,
    "Identity": _identity,
}
