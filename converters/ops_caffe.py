"""Graph ops with Caffe's semantics: LRN, BatchNorm, Scale, Bias, Eltwise, Crop, Reshape, Slice and more.

Each op is registered as ``caffe_<layer>``, so the names never clash with ops of other formats. Like every
op, none works in place.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from converters.errors import GraphSpecError
from converters.ops import _parameter, register_op


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def _broadcast(parameter: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Shape ``parameter`` to line up with ``x`` from ``axis`` on (Caffe's Scale and Bias broadcasting)."""
    axis = _axis(axis, x.dim())
    trailing = x.dim() - axis - parameter.dim()
    if trailing < 0 or tuple(x.shape[axis:axis + parameter.dim()]) != tuple(parameter.shape):
        raise GraphSpecError(
            f"a parameter of shape {list(parameter.shape)} cannot scale an input of shape {list(x.shape)} from axis {axis}"
        )
    return parameter.reshape((1,) * axis + tuple(parameter.shape) + (1,) * trailing)


@register_op("caffe_lrn")
class LocalResponseNorm(nn.Module):
    """Caffe LRN. Across channels: ``x / (k + alpha/n * sum(x^2 over n channels))^beta``.

    Within a channel Caffe squares, average-pools an n x n window (zero padding counted), and computes
    ``x * (1 + alpha * mean)^-beta``: ``k`` plays no part there (Caffe's LRN layer fixes the shift at 1).
    """

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.size = int(attrs["size"])
        self.alpha = float(attrs["alpha"])
        self.beta = float(attrs["beta"])
        self.k = float(attrs.get("k", 1.0))
        self.within_channel = attrs.get("region", "across") == "within"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.within_channel:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        pad = (self.size - 1) // 2
        mean = F.avg_pool2d(x * x, self.size, stride=1, padding=pad, count_include_pad=True)
        return x * (1.0 + self.alpha * mean).pow(-self.beta)


@register_op("caffe_batch_norm")
class BatchNorm(nn.Module):
    """Caffe BatchNorm at inference: ``(x - mean) / sqrt(var + eps)`` over axis 1, no scale or shift.

    The converter has already divided Caffe's stored sums by the moving-average factor blob.
    """

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.mean = _parameter(weights["mean"])
        self.var = _parameter(weights["var"])
        self.eps = float(attrs.get("eps", 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(shape)) / torch.sqrt(self.var.reshape(shape) + self.eps)


@register_op("caffe_scale")
class Scale(nn.Module):
    """Caffe Scale: multiply by a learned blob or by a second input, broadcast from ``axis``, plus a bias."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 1))
        self.weight = _parameter(weights.get("weight"))
        self.bias = _parameter(weights.get("bias"))

    def forward(self, x: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        factor = self.weight if factor is None else factor
        y = x * _broadcast(factor, x, self.axis)
        if self.bias is not None:
            y = y + _broadcast(self.bias, x, self.axis)
        return y


@register_op("caffe_bias")
class Bias(nn.Module):
    """Caffe Bias: add a learned blob or a second input, broadcast from ``axis``."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 1))
        self.bias = _parameter(weights.get("bias"))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.bias if bias is None else bias
        return x + _broadcast(bias, x, self.axis)


@register_op("caffe_eltwise")
class Eltwise(nn.Module):
    """Caffe Eltwise: ``sum`` (with one coefficient per input), ``prod`` or ``max`` of the inputs."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.operation = attrs.get("operation", "sum")
        self.coefficients = [float(value) for value in attrs.get("coefficients", [])]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.operation == "prod":
            result = xs[0]
            for x in xs[1:]:
                result = result * x
            return result
        if self.operation == "max":
            result = xs[0]
            for x in xs[1:]:
                result = torch.maximum(result, x)
            return result
        coefficients = self.coefficients or [1.0] * len(xs)
        result = xs[0] * coefficients[0] if coefficients[0] != 1.0 else xs[0]
        for coefficient, x in zip(coefficients[1:], xs[1:]):
            result = result + (x * coefficient if coefficient != 1.0 else x)
        return result


@register_op("caffe_crop")
class Crop(nn.Module):
    """Caffe Crop: cut the first input to the second input's shape from ``axis`` on, at ``offsets``."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 2))
        self.offsets = [int(value) for value in attrs.get("offsets", [])]

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        axis = _axis(self.axis, x.dim())
        index: list[slice] = [slice(None)] * axis
        for position, dim in enumerate(range(axis, x.dim())):
            if not self.offsets:
                offset = 0
            elif len(self.offsets) == 1:
                offset = self.offsets[0]
            else:
                offset = self.offsets[position]
            size = reference.shape[dim]
            if offset + size > x.shape[dim]:
                raise GraphSpecError(
                    f"crop of axis {dim} at offset {offset} to size {size} runs past the input size {x.shape[dim]}"
                )
            index.append(slice(offset, offset + size))
        return x[tuple(index)]


@register_op("caffe_reshape")
class Reshape(nn.Module):
    """Caffe Reshape: ``shape`` replaces axes ``axis`` .. ``axis + num_axes``; 0 copies a dim, -1 infers one."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.shape = [int(value) for value in attrs["shape"]]
        self.axis = int(attrs.get("axis", 0))
        self.num_axes = int(attrs.get("num_axes", -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = self.axis + x.dim() + 1 if self.axis < 0 else self.axis
        end = x.dim() if self.num_axes == -1 else start + self.num_axes
        middle = [x.shape[start + index] if dim == 0 else dim for index, dim in enumerate(self.shape)]
        if -1 in middle:
            # Infer the free dim from the replaced axes alone. An empty (zero-size) axis counts as 1, so
            # that shape checks on empty tensors still find the size.
            free = middle.index(-1)
            total = math.prod(max(dim, 1) for dim in x.shape[start:end])
            known = math.prod(max(dim, 1) for index, dim in enumerate(middle) if index != free)
            if total % known:
                raise GraphSpecError(f"cannot reshape axes {list(x.shape[start:end])} to {self.shape}")
            middle[free] = total // known
        return x.reshape(list(x.shape[:start]) + middle + list(x.shape[end:]))


@register_op("caffe_slice")
class Slice(nn.Module):
    """Caffe Slice: split along ``axis`` at ``points``, or into ``count`` equal parts."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 1))
        self.points = [int(value) for value in attrs.get("points", [])]
        self.count = int(attrs["count"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        axis = _axis(self.axis, x.dim())
        if self.points:
            bounds = [0, *self.points, x.shape[axis]]
            sizes = [high - low for low, high in zip(bounds, bounds[1:])]
        else:
            if x.shape[axis] % self.count:
                raise GraphSpecError(f"cannot slice axis {axis} of size {x.shape[axis]} into {self.count} equal parts")
            sizes = [x.shape[axis] // self.count] * self.count
        return tuple(torch.split(x, sizes, dim=axis))


@register_op("caffe_split")
class Split(nn.Module):
    """Caffe Split: the same tensor under ``count`` names."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.count = int(attrs["count"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,) * self.count


@register_op("caffe_power")
class Power(nn.Module):
    """Caffe Power: ``(shift + scale * x) ^ power``."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.power = float(attrs.get("power", 1.0))
        self.scale = float(attrs.get("scale", 1.0))
        self.shift = float(attrs.get("shift", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale + self.shift
        return y if self.power == 1.0 else y.pow(self.power)


@register_op("caffe_prelu")
class PReLU(nn.Module):
    """Caffe PReLU: one learned negative slope per channel, or one for all (``channel_shared``)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.weight = _parameter(weights["weight"].reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


class _Elementwise(nn.Module):
    """An element-wise function with optional float attributes."""

    function = staticmethod(torch.sigmoid)

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.alpha = float(attrs.get("alpha", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


@register_op("caffe_sigmoid")
class Sigmoid(_Elementwise):
    function = staticmethod(torch.sigmoid)


@register_op("caffe_tanh")
class TanH(_Elementwise):
    function = staticmethod(torch.tanh)


@register_op("caffe_absval")
class AbsVal(_Elementwise):
    function = staticmethod(torch.abs)


@register_op("caffe_elu")
class ELU(_Elementwise):
    """Caffe ELU: ``x`` for positive inputs, ``alpha * (exp(x) - 1)`` otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)
