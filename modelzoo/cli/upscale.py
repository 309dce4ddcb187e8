"""CLI command ``upscale``: AI super-resolution of an image through spandrel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from modelzoo.errors import OptionError

UPSCALE_HELP = """Upscale IMAGE with a super-resolution model and write the result to OUTPUT.

MODEL is a card name from 'nstzoo list' (fetched on first use) or a .pth/.safetensors file that spandrel
recognises. Without --model, --scale picks realesr_general_x4v3 (4, fast on a CPU) or realesrgan_x2plus (2).

\b
Examples:
  nstzoo upscale out.png -o out_x4.png
  nstzoo upscale out.png -o out_x4.png --model realesrgan_x4plus --tile 256
  nstzoo upscale drawing.png -o big.tif --model realesrgan_x4plus_anime_6b
  nstzoo upscale photo.jpg -o photo_x2.png --scale 2
  nstzoo upscale photo.jpg -o photo_x4.png --model ~/models/4x-custom.safetensors --device cuda:0
"""

DEFAULT_MODELS = {2: "realesrgan_x2plus", 4: "realesr_general_x4v3"}


def upscale_command(
    image: Annotated[Path, typer.Argument(help="Image to upscale (PNG, JPEG, TIFF, ...).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file; .png, .jpg or .tif (16-bit).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Upscaler card name or weights file.")] = None,
    scale: Annotated[int, typer.Option("--scale", help="Upscaling factor used to pick a model when --model is not given (2 or 4).")] = 4,
    tile: Annotated[Optional[int], typer.Option("--tile", help="Tile size in input pixels; bounds memory for large images.")] = None,
    tile_pad: Annotated[int, typer.Option("--tile-pad", help="Context around each tile in input pixels.")] = 32,
    device: Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1, mps.")] = "cpu",
) -> None:
    from modelzoo import images
    from modelzoo.devices import check_device_available, parse_devices
    from modelzoo.upscale import load_upscaler, resolve_model, upscale_tensor

    if model is None:
        if scale not in DEFAULT_MODELS:
            raise OptionError(f"invalid --scale {scale}: a default model exists for 2 and 4",
                              hint="use --scale 2 or 4, or name a model with --model")
        model = DEFAULT_MODELS[scale]
    (device,) = parse_devices(device)
    check_device_available(device)

    pixels = images.load_image(image)
    descriptor = load_upscaler(resolve_model(model), device)
    started = time.perf_counter()
    result = upscale_tensor(descriptor, pixels, tile, tile_pad)
    images.save_image(result, output)
    height, width = pixels.shape[-2:]
    typer.echo(f"wrote {output} ({width}x{height} -> {result.shape[-1]}x{result.shape[-2]}, "
               f"{time.perf_counter() - started:.1f} s)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("upscale", help=UPSCALE_HELP)(upscale_command)
