"""Colour control: keep the content's colours (luminance transfer) or match style colours to the content.

Both work on RGB floats in [0, 1], shape [1, 3, H, W]. YCbCr is the full-range ITU-R BT.601 form that
JPEG and Pillow use; it is computed in floating point, so no 8-bit rounding is added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RGB_TO_YCBCR = torch.tensor([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
])
CHROMA_OFFSET = torch.tensor([0.0, 0.5, 0.5])


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """Convert RGB [1, 3, H, W] in [0, 1] to YCbCr with Cb and Cr centred on 0.5."""
    matrix = RGB_TO_YCBCR.to(rgb)
    return torch.einsum("ij,njhw->nihw", matrix, rgb) + CHROMA_OFFSET.to(rgb).view(1, 3, 1, 1)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Invert ``rgb_to_ycbcr``."""
    matrix = torch.linalg.inv(RGB_TO_YCBCR.double()).to(ycbcr)
    centred = ycbcr - CHROMA_OFFSET.to(ycbcr).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", matrix, centred)


def keep_original_colors(content: Tensor, output: Tensor) -> Tensor:
    """Return the output's luminance with the content's chroma (Cb, Cr), clipped to [0, 1].

    The content is resized to the output's size first.
    """
    if content.shape[-2:] != output.shape[-2:]:
        content = F.interpolate(content, size=output.shape[-2:], mode="bicubic", align_corners=False,
                                antialias=True)
    luminance = rgb_to_ycbcr(output)[:, :1]
    chroma = rgb_to_ycbcr(content)[:, 1:]
    return ycbcr_to_rgb(torch.cat([luminance, chroma], dim=1)).clamp(0.0, 1.0)


def match_histograms(source: Tensor, reference: Tensor) -> Tensor:
    """Return ``source`` with each RGB channel's histogram matched to ``reference``'s (exact quantile mapping).

    Every pixel of a channel moves to the reference value at the same rank, so the result has the
    reference's per-channel distribution. Equal values keep their order because the sort is stable.
    """
    matched = torch.empty_like(source)
    for channel in range(source.shape[1]):
        values = source[0, channel].reshape(-1)
        reference_sorted = torch.sort(reference[0, channel].reshape(-1)).values
        order = torch.argsort(values, stable=True)
        # Rank r of n maps to the reference quantile r / (n - 1), interpolated between reference samples.
        positions = torch.linspace(0, reference_sorted.numel() - 1, values.numel(), dtype=torch.float64)
        lower = positions.floor().long()
        upper = positions.ceil().long()
        fraction = (positions - lower).to(source.dtype)
        mapped = reference_sorted[lower] * (1 - fraction) + reference_sorted[upper] * fraction
        channel_values = torch.empty_like(values)
        channel_values[order] = mapped
        matched[0, channel] = channel_values.view_as(source[0, channel])
    return matched


COLOR_TRANSFERS = {
    "none": lambda style, content: style,
    "histogram": match_histograms,
}
