"""The loss terms of Gatys et al. as neural-style defines them.

- Content: mean squared error between activations, times the content weight.
- Style: mean squared error between Gram matrices normalised by C*H*W, times the style weight and the
  layer's weight. The normalisation makes a Gram matrix an average over positions, so targets from an
  image of one size compare with activations of another size.
- Total variation (TV), on the network input: "l2" is half the sum of squared differences between
  right and lower neighbours over the (H-1) x (W-1) corner, whose gradient is the one neural-style Lua
  applies; "l1" is the sum of absolute differences over all neighbour pairs, as neural-style-pt computes it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

GRADIENT_EPSILON = 1e-8  # neural-style adds this to the norm before dividing


def gram_matrix(features: Tensor) -> Tensor:
    """Return the Gram matrix of ``features`` [1, C, H, W] divided by C*H*W, shape [C, C]."""
    _, channels, height, width = features.shape
    if not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last):
        positions = features.permute(0, 2, 3, 1).reshape(height * width, channels)  # NHWC: a view, no copy
        return (positions.t() @ positions) / (channels * height * width)
    flat = features.reshape(channels, height * width)
    return (flat @ flat.t()) / (channels * height * width)


GRAM_CHUNK_POSITIONS = 16384  # positions converted to float32 at a time: 4 MiB for 64 channels


def float32_gram(features: Tensor) -> Tensor:
    """Return ``gram_matrix(features)`` computed in float32, also for bfloat16 features and under autocast.

    Lower-precision features are converted a chunk of positions at a time and accumulated, so no float32
    copy of the whole activation is made. The products are exact in float32 (a bfloat16 value converts
    exactly), and the sums run in float32.
    """
    with torch.autocast(features.device.type, enabled=False):
        if features.dtype == torch.float32:
            return gram_matrix(features)
        _, channels, height, width = features.shape
        # Positions x channels: a view in either memory layout (NCHW's is transposed, so its chunks copy).
        rows = features[0].permute(1, 2, 0).reshape(height * width, channels)
        gram = torch.zeros(channels, channels, dtype=torch.float32, device=features.device)
        for start in range(0, height * width, GRAM_CHUNK_POSITIONS):
            chunk = rows[start:start + GRAM_CHUNK_POSITIONS].float()
            gram.addmm_(chunk.t(), chunk)
        return gram / (channels * height * width)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Return the mean squared error between activations (unweighted)."""
    return F.mse_loss(features, target)


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    """Return the mean squared error between the Gram matrix of ``features`` and ``target_gram`` (unweighted)."""
    return F.mse_loss(gram_matrix(features), target_gram)


def tv_loss_l2(image: Tensor) -> Tensor:
    """Return half the sum of squared right and lower neighbour differences over the (H-1) x (W-1) corner."""
    corner = image[:, :, :-1, :-1]
    right = corner - image[:, :, :-1, 1:]
    down = corner - image[:, :, 1:, :-1]
    return 0.5 * (right.square().sum() + down.square().sum())


def tv_loss_l1(image: Tensor) -> Tensor:
    """Return the sum of absolute differences between all vertical and horizontal neighbours."""
    vertical = image[:, :, 1:, :] - image[:, :, :-1, :]
    horizontal = image[:, :, :, 1:] - image[:, :, :, :-1]
    return vertical.abs().sum() + horizontal.abs().sum()


TV_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {"l2": tv_loss_l2, "l1": tv_loss_l1}
NORM_ORDERS = {"l1": 1, "l2": 2}


class NormalizeGradient(torch.autograd.Function):
    """Identity forward; backward divides the incoming gradient by its norm and multiplies by ``weight``.

    Placed between a layer's activation and its loss, it gives that loss's gradient a fixed size, as
    neural-style's ``-normalize_gradients`` does. Gradients from deeper layers do not pass through it.
    """

    @staticmethod
    def forward(ctx, features: Tensor, weight: float, order: int) -> Tensor:  # type: ignore[override]
        ctx.weight = weight
        ctx.order = order
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        norm = torch.linalg.vector_norm(grad, ord=ctx.order)
        return grad * (ctx.weight / (norm + GRADIENT_EPSILON)), None, None


def normalized(features: Tensor, weight: float, norm: str) -> Tensor:
    """Return ``features`` wrapped so the gradient of the loss on them is normalised and times ``weight``."""
    return NormalizeGradient.apply(features, weight, NORM_ORDERS[norm])
