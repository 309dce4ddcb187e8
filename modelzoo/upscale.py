"""AI upscaling through spandrel, with tiled inference for images larger than memory allows.

A model is a registry card with ``task = "upscale"`` (fetched into the cache like any model, with no graph
conversion) or a path to a ``.pth`` or ``.safetensors`` file. spandrel recognises the architecture
(ESRGAN/RRDBNet, Real-ESRGAN Compact, SwinIR, ...) from the state dict's keys and shapes.

Loading never unpickles outside data: spandrel 0.4's own ``.pth`` loader uses ``torch.load`` with a
restricted unpickler but not ``weights_only=True``, so this module reads the state dict itself
(``torch.load(weights_only=True)`` or safetensors) and hands it to ``ModelLoader.load_from_state_dict``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from modelzoo.errors import NstzooError, OptionError

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
# Default context around each tile, in input pixels. Tiles equal the untiled output when the context
# covers the model's receptive-field radius. NOTE: a 23-block RRDBNet stacks over 340 3x3 convolutions, so
# it reaches further, and its tiles differ from the untiled output by an amount that was not measured.
DEFAULT_TILE_PAD = 32


class UpscaleError(NstzooError, ValueError):
    """An upscaling model could not be loaded or run."""


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read the tensors of ``path`` (.pth/.pt/.ckpt through ``torch.load(weights_only=True)``, or
    .safetensors) and unwrap the usual containers (``params_ema``, ``state_dict``, a ``module.`` prefix)."""
    from spandrel import canonicalize_state_dict

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UpscaleError(f"unsupported upscaler file {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}",
                           hint="pass a .pth or .safetensors file, or a model name from 'nstzoo list'")
    if not path.is_file():
        raise UpscaleError(f"upscaler file not found: {path}", hint="check the path")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch and safetensors raise many types for a bad file
        raise UpscaleError(f"cannot read upscaler weights {path}: {error}",
                           hint="the file may be truncated, or a full pickled model rather than a state dict") from error
    if not isinstance(state, dict):
        raise UpscaleError(f"{path} does not contain a state dict (found {type(state).__name__})")
    return canonicalize_state_dict(state)


def load_upscaler(path: str | Path, device: str = "cpu"):
    """Return a spandrel ``ImageModelDescriptor`` for the super-resolution weights at ``path``, in eval mode."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = load_state_dict(path)
    try:
        descriptor = ModelLoader(device=device).load_from_state_dict(state)
    except UnsupportedModelError as error:
        raise UpscaleError(f"spandrel does not recognise the architecture of {path}",
                           hint="use a model that spandrel supports (ESRGAN, Real-ESRGAN, SwinIR, ...)") from error
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscaleError(f"{path} contains a {descriptor.purpose} model that needs a mask, which upscaling cannot supply",
                           hint="use an image-to-image super-resolution model")
    logger.info("loaded %s (%s, x%d) from %s", descriptor.architecture.name, descriptor.purpose, descriptor.scale, path)
    return descriptor.eval()


def resolve_model(model: str | Path) -> Path:
    """Return the weights file for ``model``: an existing file path, or a registry card name that is fetched."""
    candidate = Path(model)
    if candidate.suffix.lower() in WEIGHT_SUFFIXES or candidate.exists():
        return candidate
    from modelzoo.fetch import fetch, load_registry  # lazily: fetching pulls in the downloader

    registry = load_registry()
    card = registry.get(str(model))
    if card.task != "upscale":
        raise OptionError(f"model '{card.name}' is a {card.task} model, not an upscaler",
                          hint="pick a card whose task is upscale, e.g. realesrgan_x4plus ('nstzoo list')")
    # Upscalers are state dicts that spandrel reads as published, so there is nothing to convert.
    result = fetch(card.name, convert=False, registry=registry)
    files = getattr(result, "files", None) or {}
    weights = files.get("weights") if isinstance(files, dict) else None
    if weights is None:
        raise UpscaleError(f"fetching '{card.name}' returned no weights file", hint=f"run 'nstzoo fetch {card.name} --force'")
    return Path(weights)


def _aligned(value: int, multiple: int) -> int:
    return max(multiple, (value // multiple) * multiple)


@torch.no_grad()
def upscale_tensor(descriptor, image: Tensor, tile: int | None = None, pad: int = DEFAULT_TILE_PAD) -> Tensor:
    """Upscale ``image`` [1, 3, H, W] in [0, 1] and return [1, 3, sH, sW] in [0, 1].

    With ``tile``, the image is cut into a grid of ``tile`` x ``tile`` cores. Each core runs with ``pad``
    pixels of surrounding context (clipped at the image border), and only the core's part of the output is
    kept. A core's output equals the untiled one wherever ``pad`` covers the model's receptive field.
    Tile and pad are rounded down to the model's size multiple (pixel-unshuffle models need even sizes).
    """
    device = descriptor.device
    image = image.to(device=device, dtype=torch.float32)
    if tile is None:
        return descriptor(image).clamp(0, 1)
    if tile <= 0 or pad < 0:
        raise OptionError(f"invalid tile {tile} / pad {pad}: the tile must be positive and the pad at least 0",
                          hint="use e.g. --tile 256")
    multiple = descriptor.size_requirements.multiple_of
    tile, pad = _aligned(tile, multiple), (pad // multiple) * multiple
    scale = descriptor.scale
    _, channels, height, width = image.shape
    output = torch.empty(1, descriptor.output_channels, height * scale, width * scale, device=device)
    rows, columns = math.ceil(height / tile), math.ceil(width / tile)
    for row in range(rows):
        for column in range(columns):
            top, left = row * tile, column * tile
            bottom, right = min(top + tile, height), min(left + tile, width)
            in_top, in_left = max(top - pad, 0), max(left - pad, 0)
            in_bottom, in_right = min(bottom + pad, height), min(right + pad, width)
            logger.info("upscaling tile %d/%d", row * columns + column + 1, rows * columns)
            result = descriptor(image[:, :, in_top:in_bottom, in_left:in_right])
            output[:, :, top * scale:bottom * scale, left * scale:right * scale] = result[
                :, :, (top - in_top) * scale:(bottom - in_top) * scale, (left - in_left) * scale:(right - in_left) * scale
            ]
    return output.clamp(0, 1)


def _pil_to_tensor(image: Image.Image) -> Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None]


def _tensor_to_pil(tensor: Tensor) -> Image.Image:
    array = (tensor[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def upscale_image(image: Image.Image, model: str | Path, tile: int | None = None, device: str = "cpu",
                  pad: int = DEFAULT_TILE_PAD) -> Image.Image:
    """Upscale a PIL image with ``model`` (a card name or a weights file) and return a PIL image.

    The colour channels go through the network. An alpha channel, if any, is resized with Lanczos
    filtering and put back, because super-resolution models are trained on RGB only.
    """
    descriptor = load_upscaler(resolve_model(model), device)
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    result = _tensor_to_pil(upscale_tensor(descriptor, _pil_to_tensor(image), tile, pad))
    if alpha is not None:
        result.putalpha(alpha.resize(result.size, Image.LANCZOS))
    return result
