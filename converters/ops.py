"""Graph ops: each op name in a graph spec maps to a builder that returns a ``torch.nn.Module``.

A builder takes the node's JSON ``attrs`` and its weights (parameter name to tensor) and returns a module
whose ``forward`` takes the node's inputs in order and returns one tensor, or a tuple with one tensor per
output. Ops never work in place, so an activation captured from one node is never changed by a later one.

Modules that add ops register them with ``@register_op("name")``; ``converters.network`` imports them all.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from converters.errors import GraphSpecError

Builder = Callable[[dict[str, Any], dict[str, torch.Tensor]], nn.Module]
OP_BUILDERS: dict[str, Builder] = {}


def register_op(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` for op ``name``; registering a name twice is an error."""

    def decorate(builder: Builder) -> Builder:
        if name in OP_BUILDERS:
            raise GraphSpecError(f"op '{name}' is registered twice")
        OP_BUILDERS[name] = builder
        return builder

    return decorate


def build_module(op: str, attrs: dict[str, Any], weights: dict[str, torch.Tensor], node_name: str = "") -> nn.Module:
    """Build the module for one node, or raise naming the node and the unknown op."""
    try:
        builder = OP_BUILDERS[op]
    except KeyError:
        raise GraphSpecError(
            f"node '{node_name}' uses op '{op}', which this nstzoo cannot run; known ops: {', '.join(sorted(OP_BUILDERS))}"
        ) from None
    return builder(attrs, weights)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _parameter(tensor: torch.Tensor | None) -> nn.Parameter | None:
    """Wrap ``tensor`` as a frozen float32 parameter that shares its memory (no copy of large weights)."""
    if tensor is None:
        return None
    return nn.Parameter(tensor.detach().float(), requires_grad=False)


# --- convolution and dense layers -------------------------------------------------------------------


class Conv2d(nn.Module):
    """2-D convolution; attrs: stride, padding, dilation, groups (kernel size comes from the weight)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.weight = _parameter(weights["weight"])
        self.bias = _parameter(weights.get("bias"))
        self.stride = _pair(attrs.get("stride", 1))
        self.padding = _pair(attrs.get("padding", 0))
        self.dilation = _pair(attrs.get("dilation", 1))
        self.groups = int(attrs.get("groups", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(nn.Module):
    """2-D transposed convolution; attrs: stride, padding, output_padding, dilation, groups."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.weight = _parameter(weights["weight"])
        self.bias = _parameter(weights.get("bias"))
        self.stride = _pair(attrs.get("stride", 1))
        self.padding = _pair(attrs.get("padding", 0))
        self.output_padding = _pair(attrs.get("output_padding", 0))
        self.dilation = _pair(attrs.get("dilation", 1))
        self.groups = int(attrs.get("groups", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class Linear(nn.Module):
    """Fully connected layer over all dimensions from ``axis`` on (Caffe InnerProduct flattens them)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.weight = _parameter(weights["weight"])
        self.bias = _parameter(weights.get("bias"))
        self.axis = int(attrs.get("axis", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(self.axis), self.weight, self.bias)


register_op("conv2d")(Conv2d)
register_op("conv_transpose2d")(ConvTranspose2d)
register_op("linear")(Linear)


# --- pooling ----------------------------------------------------------------------------------------


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """Return the pooled length along one axis.

    With ``ceil_mode`` this is Caffe's rule: round up, then drop the last window if it would start in the
    padding past the input (the window must start before ``size + pad``).
    """
    span = size + 2 * pad - kernel
    if ceil_mode:
        out = int(math.ceil(span / stride)) + 1
        if pad > 0 and (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return max(out, 1)


class Pool2d(nn.Module):
    """Max or average pooling with Caffe's or PyTorch's output-size rounding.

    attrs: mode ("max" or "avg"), kernel, stride, padding, ceil_mode, count_include_pad, global.
    Average pooling divides by the window clipped to the padded input, which counts zero padding but not
    the ceil overhang (Caffe's rule, and PyTorch's with ``count_include_pad=True``).
    """

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.mode = attrs.get("mode", "max")
        if self.mode not in ("max", "avg"):
            raise GraphSpecError(f"pool2d mode must be 'max' or 'avg', got {self.mode!r}")
        self.is_global = bool(attrs.get("global", False))
        self.kernel = _pair(attrs.get("kernel", 1))
        self.stride = _pair(attrs.get("stride", 1))
        self.padding = _pair(attrs.get("padding", 0))
        self.ceil_mode = bool(attrs.get("ceil_mode", False))
        self.count_include_pad = bool(attrs.get("count_include_pad", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_global:
            if self.mode == "max":
                return torch.amax(x, dim=(2, 3), keepdim=True)
            return torch.mean(x, dim=(2, 3), keepdim=True)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        out_h = pooled_size(x.shape[2], kh, sh, ph, self.ceil_mode)
        out_w = pooled_size(x.shape[3], kw, sw, pw, self.ceil_mode)
        if ph * 2 <= kh and pw * 2 <= kw:
            pool = F.max_pool2d if self.mode == "max" else None
            if pool is not None:
                y = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=self.ceil_mode)
            else:
                y = F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=self.ceil_mode,
                                 count_include_pad=self.count_include_pad)
            if y.shape[2] == out_h and y.shape[3] == out_w:
                return y
        return self._explicit(x, out_h, out_w)

    def _explicit(self, x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """Pool by padding explicitly, for padding larger than half the kernel, which PyTorch rejects."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        need_h = (out_h - 1) * sh + kh
        need_w = (out_w - 1) * sw + kw
        extra_h = max(need_h - (x.shape[2] + 2 * ph), 0)
        extra_w = max(need_w - (x.shape[3] + 2 * pw), 0)
        if self.mode == "max":
            padded = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h), value=float("-inf"))
            return F.max_pool2d(padded, (kh, kw), (sh, sw))[:, :, :out_h, :out_w]
        padded = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h), value=0.0)
        sums = F.avg_pool2d(padded, (kh, kw), (sh, sw), divisor_override=1)[:, :, :out_h, :out_w]
        ones = torch.zeros((1, 1, x.shape[2] + 2 * ph + extra_h, x.shape[3] + 2 * pw + extra_w),
                           dtype=x.dtype, device=x.device)
        if self.count_include_pad:
            ones[:, :, : x.shape[2] + 2 * ph, : x.shape[3] + 2 * pw] = 1.0
        else:
            ones[:, :, ph: ph + x.shape[2], pw: pw + x.shape[3]] = 1.0
        counts = F.avg_pool2d(ones, (kh, kw), (sh, sw), divisor_override=1)[:, :, :out_h, :out_w]
        return sums / counts.clamp(min=1.0)


register_op("pool2d")(Pool2d)


# --- element-wise activations -----------------------------------------------------------------------


class ReLU(nn.Module):
    """ReLU, or leaky ReLU when ``negative_slope`` is not 0."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.negative_slope = float(attrs.get("negative_slope", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0.0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)


class Identity(nn.Module):
    """Pass the input through; used for Dropout at inference and for no-op layers."""

    def __init__(self, attrs: dict[str, Any] | None = None, weights: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Softmax(nn.Module):
    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=self.axis)


class Concat(nn.Module):
    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 1))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class Flatten(nn.Module):
    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.axis = int(attrs.get("axis", 1))
        self.end_axis = int(attrs.get("end_axis", -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.axis, self.end_axis)


register_op("relu")(ReLU)
register_op("dropout")(Identity)
register_op("identity")(Identity)
register_op("softmax")(Softmax)
register_op("concat")(Concat)
register_op("flatten")(Flatten)
