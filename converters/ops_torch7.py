"""Graph ops that Torch7 ``nn`` modules need beyond ``converters.ops``.

Each op is registered under a ``t7_`` name so it cannot clash with ops other converters add.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from converters.errors import GraphSpecError
from converters.ops import register_op

PAD_MODES = {"zero": "constant", "reflection": "reflect", "replication": "replicate"}


def _buffer(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    module.register_buffer(name, None if tensor is None else tensor.detach().clone().float())


@register_op("t7_pad")
class Pad2d(nn.Module):
    """Spatial padding; attrs ``mode`` (zero, reflection, replication) and ``pads`` [left, right, top, bottom].

    Negative zero padding crops, as ``nn.SpatialZeroPadding`` does.
    """

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        mode = attrs.get("mode", "zero")
        if mode not in PAD_MODES:
            raise GraphSpecError(f"t7_pad mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
        self.mode = PAD_MODES[mode]
        self.pads = tuple(int(value) for value in attrs["pads"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, mode=self.mode)


@register_op("t7_batch_norm")
class BatchNorm(nn.Module):
    """Inference-mode batch normalization with running statistics; ``weight``/``bias`` are optional."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        _buffer(self, "running_mean", weights["running_mean"])
        _buffer(self, "running_var", weights["running_var"])
        _buffer(self, "weight", weights.get("weight"))
        _buffer(self, "bias", weights.get("bias"))
        self.eps = float(attrs.get("eps", 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


@register_op("t7_instance_norm")
class InstanceNorm(nn.Module):
    """Instance normalization with each image's own statistics, also at inference (Ulyanov et al., 2016)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        _buffer(self, "weight", weights.get("weight"))
        _buffer(self, "bias", weights.get("bias"))
        self.eps = float(attrs.get("eps", 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}


@register_op("t7_activation")
class Activation(nn.Module):
    """An element-wise function without parameters; attrs ``function`` (tanh or sigmoid)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        name = attrs.get("function", "")
        if name not in ACTIVATIONS:
            raise GraphSpecError(f"t7_activation function must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
        self.function = ACTIVATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


@register_op("t7_threshold")
class Threshold(nn.Module):
    """``nn.Threshold``: ``x`` where ``x > threshold``, else ``value``."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.threshold = float(attrs.get("threshold", 0.0))
        self.value = float(attrs.get("value", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.threshold, x, torch.full_like(x, self.value))


@register_op("t7_add")
class AddInputs(nn.Module):
    """The element-wise sum of all inputs (``nn.CAddTable``)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total


@register_op("t7_mul_constant")
class MulConstant(nn.Module):
    """Multiplication by a scalar (``nn.MulConstant``)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.constant = float(attrs["constant"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.constant


@register_op("t7_view")
class View(nn.Module):
    """Reshape every item of the batch to ``shape`` (``nn.View``, ``nn.Reshape``); -1 is inferred."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.shape = tuple(int(value) for value in attrs["shape"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@register_op("t7_upsample_nearest")
class UpsampleNearest(nn.Module):
    """Nearest-neighbour upsampling by an integer ``scale`` (``nn.SpatialUpSamplingNearest``)."""

    def __init__(self, attrs: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.scale = int(attrs["scale"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")
