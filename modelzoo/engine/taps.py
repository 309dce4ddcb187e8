"""Content and style losses that add their gradient when the backward pass reaches their layer.

With autograd's usual order, the gradient of every loss term is computed as soon as the backward pass
starts. Each one is then held until the pass reaches its layer. For VGG-19 at 512 px that is about 120 MiB
of style gradients held through the whole pass (an estimate from the tensor sizes), and the Gram matrix
products make two more copies of each activation while they are computed. neural-style Lua avoids this by
putting its loss modules inside the network; these taps do the same:

- ``ContentTap`` and ``StyleTap`` sit in the network right after the layer they read. Their forward pass
  returns the activation unchanged and records the loss value (no autograd graph is built for the loss).
  Their backward pass adds the loss's gradient to the gradient coming from deeper layers.
- ``objective`` joins the recorded values into the scalar that ``backward()`` starts from. Its backward pass
  gives no gradient to the tapped activations, so a tap with no deeper layer receives zeros (autograd
  materialises them) and adds its own gradient to them. It passes the gradient it receives (1 for a plain
  ``backward()``) to the taps, which scale their gradients by it.

For a style layer with activations F ([P, C]: P positions, C channels), n = C*P, Gram matrix G = F^T F / n
and target T, the term w * mean((G - T)^2) has the gradient F @ (4 w (G - T) / (C^2 n)), one matrix product.
A content layer's term w * mean((F - T)^2) has the gradient 2 w (F - T) / numel(F).
With ``order`` set (normalised gradients, as neural-style's ``-normalize_gradients``), the gradient of the
unweighted term is divided by its L1 or L2 norm plus 1e-8 and then multiplied by w.

Activations in bfloat16 (``precision="bfloat16"``) are read in float32 for the Gram matrix and the loss
values; the gradient is added in the activation's own type.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelzoo.engine.losses import GRADIENT_EPSILON, float32_gram


def _is_nhwc(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _gradient_of_gram_loss(features: Tensor, factor: Tensor, grad: Tensor | None = None) -> Tensor:
    """Return ``grad + F @ factor`` (``F @ factor`` when ``grad`` is None) in the memory layout of ``features``.

    ``F`` is ``features`` [1, C, H, W] as positions x channels; ``factor`` is a symmetric [C, C] matrix.
    """
    batch, channels, height, width = features.shape
    if _is_nhwc(features):  # rows are positions: (P x C) @ (C x C)
        rows = features.permute(0, 2, 3, 1).reshape(height * width, channels)
        start = None if grad is None else grad.permute(0, 2, 3, 1).reshape(height * width, channels)
        result = rows @ factor if start is None else torch.addmm(start, rows, factor)
        return result.view(batch, height, width, channels).permute(0, 3, 1, 2)
    columns = features.reshape(channels, height * width)  # rows are channels: (C x C) @ (C x P), factor = factor^T
    start = None if grad is None else grad.reshape(channels, height * width)
    result = factor @ columns if start is None else torch.addmm(start, factor, columns)
    return result.view(batch, channels, height, width)


def _scaled(unit: Tensor, weight: float, order: int) -> Tensor:
    """Return ``unit * weight``, or ``unit`` normalised to norm ``weight`` when ``order`` is 1 or 2."""
    if order:
        norm = torch.linalg.vector_norm(unit, ord=order, dtype=torch.float32)
        return unit * (weight / (float(norm) + GRADIENT_EPSILON))
    return unit * weight


class TapRecord:
    """The weighted loss term of each tap, by key, and the scale that the objective's backward pass sets."""

    def __init__(self) -> None:
        self.terms: dict[str, Tensor] = {}
        self.scale = 1.0


class StyleTap(torch.autograd.Function):
    """Identity on an activation whose backward pass adds the gradient of its Gram matrix loss."""

    @staticmethod
    def forward(ctx, features: Tensor, target: Tensor, weight: float, order: int, record: TapRecord, key: str):  # type: ignore[override]
        gram = float32_gram(features)
        difference = gram - target.to(gram.device)
        record.terms[key] = (difference.square().mean() * weight).detach()
        channels = gram.shape[0]
        # d/dF of mean((G - T)^2) is F @ (4 (G - T) / (C^2 n)) with n = C * H * W, because G and T are symmetric.
        ctx.factor = difference * (4.0 / (channels * channels * features[0].numel()))
        ctx.weight, ctx.order, ctx.record = weight, order, record
        ctx.save_for_backward(features)
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (features,) = ctx.saved_tensors
        factor = ctx.factor.to(features.dtype)
        weight = ctx.weight * ctx.record.scale
        if ctx.order:
            unit = _gradient_of_gram_loss(features, factor)
            norm = torch.linalg.vector_norm(unit, ord=ctx.order, dtype=torch.float32)
            result = unit.mul_(weight / (float(norm) + GRADIENT_EPSILON)).add_(grad)
        else:
            result = _gradient_of_gram_loss(features, factor * weight, grad.to(features.dtype))
        return result, None, None, None, None, None


class ContentTap(torch.autograd.Function):
    """Identity on an activation whose backward pass adds the gradient of its mean squared error to a target."""

    @staticmethod
    def forward(ctx, features: Tensor, target: Tensor, weight: float, order: int, record: TapRecord, key: str):  # type: ignore[override]
        with torch.autocast(features.device.type, enabled=False):
            difference = features.float() - target.to(features.device)
        record.terms[key] = (difference.square().mean() * weight).detach()
        ctx.weight, ctx.order, ctx.record = weight, order, record
        ctx.save_for_backward(features, target)
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        features, target = ctx.saved_tensors
        unit = (features.float() - target.to(features.device)) * (2.0 / features.numel())
        added = _scaled(unit, ctx.weight * ctx.record.scale, ctx.order).to(grad.dtype)
        return grad + added, None, None, None, None, None


class _Objective(torch.autograd.Function):
    """Scalar node that returns the recorded total. Its backward pass gives the taps only the scale, no gradient."""

    @staticmethod
    def forward(ctx, total: Tensor, record: TapRecord, *tapped: Tensor):  # type: ignore[override]
        ctx.count, ctx.record = len(tapped), record
        return total.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ctx.record.scale = float(grad)  # the taps run after this node, so they read it
        return (None,) * (2 + ctx.count)


def objective(record: TapRecord, tapped: list[Tensor]) -> Tensor:
    """Return the sum of the recorded terms as a scalar whose backward pass runs every tap in ``tapped``."""
    device = tapped[0].device
    total = sum((value.to(device) for value in record.terms.values()),
                torch.zeros((), dtype=torch.float32, device=device))
    return _Objective.apply(total, record, *tapped)
