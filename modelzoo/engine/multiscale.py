"""Multi-scale style transfer: optimise at each size in turn, each scale starting from the last result.

Each scale resizes the content and style images to that size (styles to ``style_scale`` times it),
computes their targets once, and optimises one image, or tiles of it when ``tile`` is smaller than the
image. This is what neural-style users do with scripts (256 -> 512 -> 1024 ... with ``-init image``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from modelzoo.engine.initial import make_initial_image
from modelzoo.engine.precision import network_precision
from modelzoo.engine.network import Contract, LayerPlan
from modelzoo.engine.optimise import Objective, ProgressCallback, RunSettings, optimise_image
from modelzoo.engine.options import StyleOptions
from modelzoo.engine.targets import StyleTargets, blend_weights, compute_content_targets, compute_style_targets

logger = logging.getLogger(__name__)


def scale_sizes(options: StyleOptions) -> list[int]:
    """Return the longest side of each scale, smallest first; one scale at ``image_size`` by default."""
    return list(options.scales) if options.scales else [options.image_size]


def geometric_scales(start: int, end: int, steps: int) -> tuple[int, ...]:
    """Return ``steps`` sizes from ``start`` to ``end`` with a constant ratio (``steps`` >= 1)."""
    if steps <= 1:
        return (end,)
    ratio = (end / start) ** (1.0 / (steps - 1))
    return tuple(int(round(start * ratio ** index)) for index in range(steps - 1)) + (end,)


def iterations_for(options: StyleOptions, index: int) -> int:
    """Return the iterations of scale ``index``."""
    per_scale = options.iterations_per_scale
    if not per_scale:
        return options.iterations
    return per_scale[index] if len(per_scale) > 1 else per_scale[0]


def resize_longest(rgb: Tensor, size: int) -> Tensor:
    """Resize RGB [1, 3, H, W] so its longest side is ``size``, keeping the aspect ratio."""
    height, width = rgb.shape[-2:]
    factor = size / max(height, width)
    target = (max(1, int(round(height * factor))), max(1, int(round(width * factor))))
    return resize_to(rgb, target)


def resize_to(image: Tensor, target: tuple[int, int]) -> Tensor:
    """Resize to ``target`` (height, width): bicubic with antialiasing when shrinking."""
    if tuple(image.shape[-2:]) == tuple(target):
        return image
    return F.interpolate(image, size=target, mode="bicubic", align_corners=False, antialias=True)


@dataclass
class ScaleJob:
    """Everything one run over the scales needs besides the options."""

    net: object
    plan: LayerPlan
    contract: Contract
    content_rgb: Tensor
    style_rgbs: list[Tensor]
    device: torch.device
    generator: torch.Generator | None = None
    callback: ProgressCallback | None = None
    to_output_rgb: Callable[[Tensor], Tensor] | None = None
    channels_last: bool = False  # the network runs on NHWC copies of its inputs

    def network_layout(self, image: Tensor) -> Tensor:
        """Return ``image`` in the memory order the network runs in."""
        return image.contiguous(memory_format=torch.channels_last) if self.channels_last else image


def run_scales(job: ScaleJob, options: StyleOptions) -> tuple[Tensor, list[dict[str, float]]]:
    """Run every scale and return the final image in network space and the loss history of all scales."""
    sizes = scale_sizes(options)
    weights = blend_weights(len(job.style_rgbs), options.style_blend_weights)
    history: list[dict[str, float]] = []
    image: Tensor | None = None
    for index, size in enumerate(sizes):
        content_input = job.contract.to_network(resize_longest(job.content_rgb, size).clamp(0.0, 1.0)).to(job.device)
        style_size = max(1, int(round(size * options.style_scale)))
        style_inputs = [job.contract.to_network(resize_longest(rgb, style_size).clamp(0.0, 1.0)).to(job.device)
                        for rgb in job.style_rgbs]
        with network_precision(options.precision, job.device):
            style_targets = compute_style_targets(job.net, [job.network_layout(x) for x in style_inputs], weights,
                                                  job.plan.style_layers)
        del style_inputs
        if image is None:
            init = make_initial_image(options.init, content_input, job.contract, job.generator)
        else:
            init = resize_to(image, tuple(content_input.shape[-2:]))
        settings = _settings(options, index, len(sizes), job)
        logger.info("scale %d/%d: %dx%d, %d iterations", index + 1, len(sizes), content_input.shape[-1],
                    content_input.shape[-2], settings.iterations)
        image, scale_history = optimise_scale(job, options, settings, content_input, init, style_targets)
        history.extend(scale_history)
    assert image is not None
    return image, history


def _settings(options: StyleOptions, index: int, count: int, job: ScaleJob) -> RunSettings:
    return RunSettings(
        optimizer=options.optimizer,
        iterations=iterations_for(options, index),
        lbfgs_history=options.lbfgs_history,
        lbfgs_history_dtype=options.lbfgs_history_dtype,
        learning_rate=options.learning_rate,
        print_every=options.print_every,
        save_every=options.save_every,
        scale_index=index,
        scale_count=count,
        to_rgb=job.to_output_rgb,
    )


def make_tile_optimizer(job: ScaleJob, options: StyleOptions, settings: RunSettings, style_targets: StyleTargets,
                        history: list[dict[str, float]]) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``optimize_tile(content_tile, init_tile) -> result_tile`` against fixed style targets.

    All three tensors are in network space. Content targets are computed per tile; the style targets are
    the whole image's, so every tile pulls towards the same style statistics.
    """
    tile_counter = [0]

    def optimize_tile(content_tile: Tensor, init_tile: Tensor) -> Tensor:
        with network_precision(options.precision, job.device):
            content_targets = compute_content_targets(job.net, job.network_layout(content_tile), job.plan.content_layers)
        objective = _objective(job, options, content_targets, style_targets)
        tile_settings = RunSettings(**{**settings.__dict__, "tile_index": tile_counter[0], "to_rgb": None})
        tile_counter[0] += 1
        result, tile_history = optimise_image(objective, init_tile, tile_settings, job.callback)
        history.extend(tile_history)
        return result

    return optimize_tile


def optimise_scale(job: ScaleJob, options: StyleOptions, settings: RunSettings, content_input: Tensor,
                   init: Tensor, style_targets: StyleTargets) -> tuple[Tensor, list[dict[str, float]]]:
    """Optimise one scale, in tiles when ``options.tile`` is smaller than the image."""
    if options.tile and max(content_input.shape[-2:]) > options.tile:
        from modelzoo.tiling import stylize_tiled

        history: list[dict[str, float]] = []
        optimize_tile = make_tile_optimizer(job, options, settings, style_targets, history)
        result = stylize_tiled(content_input, init, options.tile, options.tile_overlap, optimize_tile)
        return result, history
    with network_precision(options.precision, job.device):
        content_targets = compute_content_targets(job.net, job.network_layout(content_input), job.plan.content_layers)
    objective = _objective(job, options, content_targets, style_targets)
    return optimise_image(objective, init, settings, job.callback)



def _objective(job: ScaleJob, options: StyleOptions, content_targets, style_targets: StyleTargets) -> Objective:
    objective = Objective(job.net, job.plan, content_targets, style_targets, tv_form=options.tv_form,
                          normalize_gradients=options.normalize_gradients, gradient_norm=options.gradient_norm,
                          precision=options.precision, channels_last=job.channels_last)
    if options.normalize_weights:
        objective.normalize_layer_weights()
    return objective
