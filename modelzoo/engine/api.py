"""``stylize``: the library entry point of the style engine.

The steps are: resolve the options, load the network and its layer plan, read the images, run the
scales (``multiscale.run_scales``), then map the result back to RGB and apply the colour option.
Progress and losses go to the callback; nothing is printed and no file is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor

from modelzoo.engine.colour import COLOR_TRANSFERS, keep_original_colors
from modelzoo.engine.fusion import prepare_for_layers
from modelzoo.engine.multiscale import ScaleJob, run_scales, scale_sizes
from modelzoo.engine.network import Contract, LayerPlan, card_of, load_network, plan_layers
from modelzoo.engine.optimise import ProgressCallback
from modelzoo.engine.options import StyleOptions
from modelzoo.engine.precision import resolve_precision
from modelzoo.errors import ImageError, OptionError
from modelzoo.images import from_pil, list_images, load_image, to_pil

logger = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | Tensor


@dataclass
class StyleResult:
    """The stylized image as RGB floats in [0, 1], shape [1, 3, H, W], with the run's loss history.

    ``history`` has one dict per iteration (all scales and tiles in order) with the weighted "content",
    "style", "tv" and "total" losses.
    """

    image: Tensor
    history: list[dict[str, float]]
    plan: LayerPlan
    sizes: list[int]

    def to_pil(self) -> Image.Image:
        """Return the image as an 8-bit RGB Pillow image."""
        return to_pil(self.image)


def stylize(content: ImageInput, style: ImageInput | Sequence[ImageInput], options: StyleOptions | None = None, *,
            model: Any = None, callback: ProgressCallback | None = None, contract: Contract | None = None,
            **changes: Any) -> StyleResult:
    """Stylize ``content`` with one or more ``style`` images and return a ``StyleResult``.

    ``content`` and each style are a path, a Pillow image or an RGB tensor in [0, 1]; a folder among the
    styles stands for every image in it. ``options`` fields may also be given as keyword arguments
    (``iterations=200``). ``model`` is a registry name, a converted folder or a network object with
    ``extract`` (default: ``options.model``). ``callback`` receives a ``Progress`` per iteration and may
    return False to stop early. ``contract`` overrides the card's input contract, which a bare network
    needs (default for a network without a card: RGB in [0, 1]).
    """
    options = (options or StyleOptions()).with_changes(**changes)
    options = options.with_changes(precision=resolve_precision(options.precision, _input_device(options)))
    if options.precision == "bfloat16":
        logger.info("the network runs in bfloat16 (--precision float32 for float32 throughout)")
    generator = _seed(options.seed)
    _configure_backend(options)

    net, plan = prepare_network(model if model is not None else options.model, options)
    contract = contract or Contract.from_card(card_of(net), options.pixel_scale)
    content_rgb = _read(content, "content")
    style_rgbs = [COLOR_TRANSFERS[options.color_transfer](rgb, content_rgb) for rgb in read_styles(style)]
    if options.style_blend_weights is not None and len(options.style_blend_weights) != len(style_rgbs):
        raise OptionError(f"invalid style_blend_weights {list(options.style_blend_weights)}: expected one weight "
                          f"per style image ({len(style_rgbs)})")

    def to_output_rgb(network_image: Tensor) -> Tensor:
        rgb = contract.from_network(network_image.detach()).clamp(0.0, 1.0).cpu()
        return keep_original_colors(content_rgb, rgb) if options.original_colors else rgb

    job = ScaleJob(net=net, plan=plan, contract=contract, content_rgb=content_rgb, style_rgbs=style_rgbs,
                   device=_input_device(options), generator=generator, callback=callback,
                   to_output_rgb=to_output_rgb, channels_last=_channels_last(options))
    image, history = _run(job, options)
    return StyleResult(to_output_rgb(image), history, plan, scale_sizes(options))


def prepare_network(model: Any, options: StyleOptions) -> tuple[Any, LayerPlan]:
    """Load the network, resolve its layer plan, and place it on ``options.device`` or split it across
    ``options.devices``.

    On one device the network is also cut after the deepest layer, its BatchNorm layers are folded, and its
    convolution, ReLU and pooling layers keep less for backward (``modelzoo.engine.lean``).
    Split across devices it is kept whole, so ``split_at`` counts the nodes that ``nstzoo info`` lists.
    """
    net = load_network(model, device=options.devices[0] if options.devices else options.device, pooling=options.pooling)
    plan = plan_layers(net, options)
    if len(options.devices) <= 1:
        net = prepare_for_layers(net, plan.all_layers, lean_backward=True)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    if len(options.devices) > 1:
        from modelzoo.devices import place_model

        size = max(scale_sizes(options))
        placed = place_model(net, list(options.devices), list(options.split_at) or None, height=size, width=size,
                             layer_names=plan.all_layers)
        return placed, plan
    return net.to(_input_device(options)), plan


def read_styles(style: ImageInput | Sequence[ImageInput]) -> list[Tensor]:
    """Read one or several style images; a folder stands for every image in it."""
    items = [style] if isinstance(style, (str, Path, Image.Image, Tensor)) else list(style)
    if not items:
        raise OptionError("no style image given", hint="pass at least one style image or a folder of them")
    images: list[Tensor] = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            images.extend(load_image(path) for path in list_images(item))
        else:
            images.append(_read(item, "style"))
    return images


def _read(item: ImageInput, role: str) -> Tensor:
    if isinstance(item, Tensor):
        if item.dim() == 3:
            item = item[None]
        if item.dim() != 4 or item.shape[:2] != (1, 3):
            raise ImageError(f"{role} tensor must be RGB [1, 3, H, W] in [0, 1], got shape {list(item.shape)}")
        return item.float()
    if isinstance(item, Image.Image):
        return from_pil(item)
    return load_image(item)


def _channels_last(options: StyleOptions) -> bool:
    """Return whether the network runs on NHWC images (``options.channels_last``; None: on the CPU)."""
    if options.channels_last is not None:
        return bool(options.channels_last)
    return _input_device(options).type == "cpu"


def _input_device(options: StyleOptions) -> torch.device:
    return torch.device(options.devices[0] if options.devices else options.device)


def _seed(seed: int | None) -> torch.Generator | None:
    """Seed torch and return a CPU generator for the random init, or None when unseeded."""
    if seed is None or seed < 0:
        return None
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def _configure_backend(options: StyleOptions) -> None:
    try:
        from modelzoo.cudnn import configure_cudnn
    except ImportError:
        torch.backends.cudnn.enabled = options.cudnn
        torch.backends.cudnn.benchmark = options.cudnn_autotune
        return
    configure_cudnn(enabled=options.cudnn, benchmark=options.cudnn_autotune)


def _run(job: ScaleJob, options: StyleOptions) -> tuple[Tensor, list[dict[str, float]]]:
    """Run the scales; on CUDA, retry without cuDNN when cuDNN fails."""
    if job.device.type != "cuda":
        return run_scales(job, options)
    from modelzoo.cudnn import run_with_cudnn_fallback

    return run_with_cudnn_fallback(run_scales, job, options)
