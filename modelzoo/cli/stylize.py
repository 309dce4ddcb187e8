"""``nstzoo stylize``: maps flags to ``StyleOptions``, draws progress on stderr and writes the images."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

logger = logging.getLogger(__name__)

STYLIZE_HELP = """Stylize CONTENT with one or more STYLE images (or folders of them) and write OUT.

Numbers accept scientific notation everywhere (1e2, 5e0, 1e-3). Layer and weight defaults come from the
model's card (see 'nstzoo info MODEL').

\b
Examples:
  nstzoo stylize photo.jpg painting.jpg -o out.png
  nstzoo stylize photo.jpg a.jpg b.jpg --style-blend-weights 3,7 -o out.png
  nstzoo stylize photo.jpg styles/ --model vgg19 --image-size 512 -o out.png
  nstzoo stylize photo.jpg painting.jpg --scales 256,512,1024 --iterations-per-scale 300,200,100 -o big.tif
  nstzoo stylize photo.jpg painting.jpg --original-colors --init random --seed 1 -o out.jpg
  nstzoo stylize photo.jpg painting.jpg --image-size 4000 --scales 500,1000,2000,4000 --tile 1024 -o huge.png
  nstzoo stylize photo.jpg painting.jpg --devices cuda:0,cuda:1 --split-at 12 --dry-run
"""

NUMBER = "NUMBER"
LIST = "A,B,..."


def stylize_command(
    content: Annotated[Path, typer.Argument(help="Content image.", metavar="CONTENT")],
    styles: Annotated[list[Path], typer.Argument(help="Style images or folders of them.", metavar="STYLE")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .png, .jpg or .tif (16-bit).")] = Path("out.png"),
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name or converted folder [default: open_nsfw].")] = None,
    content_layers: Annotated[Optional[str], typer.Option(help="Content layers, comma-separated [default: the card's].", metavar=LIST)] = None,
    style_layers: Annotated[Optional[str], typer.Option(help="Style layers, comma-separated [default: the card's].", metavar=LIST)] = None,
    style_layer_weights: Annotated[Optional[str], typer.Option(help="One weight per style layer, multiplying --style-weight.", metavar=LIST)] = None,
    style_blend_weights: Annotated[Optional[str], typer.Option(help="One weight per style image; normalised to sum 1 [default: equal].", metavar=LIST)] = None,
    content_weight: Annotated[Optional[str], typer.Option(help="Content loss weight [default: the card's, 5e0 for VGG-19].", metavar=NUMBER)] = None,
    style_weight: Annotated[Optional[str], typer.Option(help="Style loss weight [default: the card's, 1e2 for VGG-19].", metavar=NUMBER)] = None,
    tv_weight: Annotated[Optional[str], typer.Option(help="Total-variation weight, 0 turns it off [default: the card's, 1e-3].", metavar=NUMBER)] = None,
    tv_form: Annotated[str, typer.Option(help="TV form: l2 (squared differences, neural-style Lua) or l1 (neural-style-pt).")] = "l2",
    image_size: Annotated[str, typer.Option("--image-size", "-s", help="Longest side of the output in pixels.", metavar=NUMBER)] = "512",
    style_scale: Annotated[str, typer.Option(help="Style images are resized to this times --image-size.", metavar=NUMBER)] = "1.0",
    pixel_scale: Annotated[str, typer.Option(help="Multiplier from [0, 1] pixels for 0-255 networks: 255 or 256 (neural-style Lua).", metavar=NUMBER)] = "255",
    init: Annotated[str, typer.Option(help="Start image: image (the content), random, or a path.")] = "image",
    optimizer: Annotated[str, typer.Option(help="lbfgs or adam.")] = "lbfgs",
    iterations: Annotated[str, typer.Option("--iterations", "-n", help="Iterations (loss evaluations) per scale.", metavar=NUMBER)] = "1000",
    lbfgs_history: Annotated[str, typer.Option(help="L-BFGS history size (neural-style's -lbfgs_num_correction).", metavar=NUMBER)] = "100",
    learning_rate: Annotated[str, typer.Option(help="Adam learning rate, in network-input units.", metavar=NUMBER)] = "1e1",
    pooling: Annotated[Optional[str], typer.Option(help="max or avg (an unscaled swap) [default: the card's].")] = None,
    normalize_gradients: Annotated[bool, typer.Option(help="Divide each layer's loss gradient by its norm.")] = False,
    gradient_norm: Annotated[str, typer.Option(help="Norm for --normalize-gradients: l1 (neural-style Lua) or l2 (neural-style-pt).")] = "l1",
    normalize_weights: Annotated[bool, typer.Option(help="Divide each layer's weight by its target's largest dimension.")] = False,
    original_colors: Annotated[bool, typer.Option(help="Keep the content's colours: output luminance, content chroma.")] = False,
    color_transfer: Annotated[str, typer.Option(help="none, or histogram: match style colours to the content first.")] = "none",
    seed: Annotated[Optional[str], typer.Option(help="Random seed; -1 or unset means not seeded.", metavar=NUMBER)] = None,
    precision: Annotated[str, typer.Option(help="auto, float32 or bfloat16. auto: bfloat16 activations on CPUs with AVX-512 BF16 or AMX-BF16 (VGG-19 up to about 1.8x faster, open_nsfw about 1.4x; half the memory), else float32.")] = "auto",
    print_every: Annotated[str, typer.Option(help="Log the losses every N iterations (0: never).", metavar=NUMBER)] = "50",
    save_every: Annotated[str, typer.Option(help="Write OUT_<iteration> snapshots and OUT_losses.csv every N iterations (0: never).", metavar=NUMBER)] = "0",
    device: Annotated[str, typer.Option(help="Device: cpu, cuda, cuda:1, mps ...")] = "cpu",
    cudnn: Annotated[bool, typer.Option(help="Use cuDNN on CUDA devices.")] = True,
    cudnn_autotune: Annotated[bool, typer.Option(help="Let cuDNN pick the fastest convolution algorithms.")] = False,
    scales: Annotated[Optional[str], typer.Option(help="Multi-scale: longest sides, smallest first, e.g. 512,1024,2048.", metavar=LIST)] = None,
    scale_start: Annotated[Optional[str], typer.Option(help="Multi-scale: first longest side, growing to --image-size.", metavar=NUMBER)] = None,
    scale_steps: Annotated[str, typer.Option(help="Multi-scale: number of scales from --scale-start to --image-size.", metavar=NUMBER)] = "3",
    iterations_per_scale: Annotated[Optional[str], typer.Option(help="Iterations of each scale (one number, or one per scale).", metavar=LIST)] = None,
    tile: Annotated[str, typer.Option(help="Optimise scales larger than N pixels in N x N tiles (0: no tiling).", metavar=NUMBER)] = "0",
    tile_overlap: Annotated[str, typer.Option(help="Overlap of neighbouring tiles in pixels.", metavar=NUMBER)] = "64",
    devices: Annotated[Optional[str], typer.Option(help="Split the network across devices: cuda:0,cuda:1,cpu or 0,1,c.", metavar=LIST)] = None,
    split_at: Annotated[Optional[str], typer.Option(help="Node indices where each next device starts [default: by memory].", metavar=LIST)] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the memory estimate per device and exit.")] = False,
    upscale: Annotated[Optional[int], typer.Option(help="Upscale the result 2x or 4x with a super-resolution model.")] = None,
    upscale_model: Annotated[Optional[str], typer.Option(help="Upscaler card or weights file [default: realesrgan_x2plus / realesrgan_x4plus].")] = None,
    progress: Annotated[bool, typer.Option(help="Draw a progress bar on stderr.")] = True,
    show_options: Annotated[bool, typer.Option(help="Print the resolved options as JSON and exit.")] = False,
) -> None:
    from modelzoo.engine import options as opts

    option_values = dict(
        content_layers=opts.parse_names(content_layers) if content_layers else None,
        style_layers=opts.parse_names(style_layers) if style_layers else None,
        style_layer_weights=opts.parse_numbers(style_layer_weights, "--style-layer-weights") if style_layer_weights else None,
        style_blend_weights=opts.parse_numbers(style_blend_weights, "--style-blend-weights") if style_blend_weights else None,
        content_weight=_optional_number(content_weight, "--content-weight"),
        style_weight=_optional_number(style_weight, "--style-weight"),
        tv_weight=_optional_number(tv_weight, "--tv-weight"),
        tv_form=tv_form,
        image_size=opts.parse_count(image_size, "--image-size"),
        style_scale=opts.parse_number(style_scale, "--style-scale"),
        pixel_scale=opts.parse_number(pixel_scale, "--pixel-scale"),
        init=init,
        optimizer=optimizer,
        iterations=opts.parse_count(iterations, "--iterations"),
        lbfgs_history=opts.parse_count(lbfgs_history, "--lbfgs-history"),
        learning_rate=opts.parse_number(learning_rate, "--learning-rate"),
        pooling=pooling,
        normalize_gradients=normalize_gradients,
        gradient_norm=gradient_norm,
        normalize_weights=normalize_weights,
        original_colors=original_colors,
        color_transfer=color_transfer,
        seed=opts.parse_count(seed, "--seed") if seed is not None else None,
        precision=precision,
        print_every=opts.parse_count(print_every, "--print-every"),
        save_every=opts.parse_count(save_every, "--save-every"),
        device=device,
        cudnn=cudnn,
        cudnn_autotune=cudnn_autotune,
        iterations_per_scale=opts.parse_counts(iterations_per_scale, "--iterations-per-scale") if iterations_per_scale else (),
        tile=opts.parse_count(tile, "--tile"),
        tile_overlap=opts.parse_count(tile_overlap, "--tile-overlap"),
    )
    if model is not None:
        option_values["model"] = model
    option_values["scales"] = _scales(scales, scale_start, scale_steps, option_values["image_size"])
    if devices:
        from modelzoo.devices import parse_devices

        option_values["devices"] = tuple(parse_devices(devices))
    if split_at:
        option_values["split_at"] = opts.parse_counts(split_at, "--split-at")
    if upscale is not None and upscale not in (2, 4):
        raise typer.BadParameter(f"{upscale} is not 2 or 4", param_hint="--upscale")
    options = opts.StyleOptions().with_changes(**option_values)
    _check_inputs_exist([content, *styles])

    if show_options:
        typer.echo(json.dumps(dataclasses.asdict(options), indent=1, default=str))
        return
    if dry_run:
        typer.echo(_dry_run_report(content, options))
        return
    result = _stylize_with_progress(content, styles, options, output, progress)
    _write_outputs(result, output, upscale, upscale_model, options)


def _check_inputs_exist(paths: list[Path]) -> None:
    """Raise ImageError for the first missing path, before any model is fetched or loaded."""
    from modelzoo.errors import ImageError

    for path in paths:
        if not path.exists():
            raise ImageError(f"image not found: {path}", hint="check the path")


def _optional_number(text: str | None, name: str) -> float | None:
    from modelzoo.engine.options import parse_number

    return parse_number(text, name) if text is not None else None


def _scales(scales: str | None, start: str | None, steps: str, image_size: int) -> tuple[int, ...]:
    from modelzoo.engine.multiscale import geometric_scales
    from modelzoo.engine.options import parse_count, parse_counts

    if scales:
        return parse_counts(scales, "--scales")
    if start is not None:
        return geometric_scales(parse_count(start, "--scale-start"), image_size, parse_count(steps, "--scale-steps"))
    return ()


def _dry_run_report(content: Path, options) -> str:
    from modelzoo.devices import format_estimate
    from modelzoo.engine.multiscale import scale_sizes
    from modelzoo.images import load_image

    from modelzoo.engine.network import load_network, plan_layers

    net = load_network(options.model, device="cpu", pooling=options.pooling)
    plan = plan_layers(net, options)
    height, width = load_image(content).shape[-2:]
    size = max(scale_sizes(options))
    factor = size / max(height, width)
    height, width = int(round(height * factor)), int(round(width * factor))
    if options.tile and max(height, width) > options.tile:
        height, width = min(height, options.tile), min(width, options.tile)
    devices = list(options.devices) or [options.device]
    return format_estimate(net, plan.all_layers, height, width, devices, list(options.split_at) or None)


WIDE_TERMINAL = 120  # columns the full progress line needs


def _stylize_with_progress(content: Path, styles: list[Path], options, output: Path, show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from modelzoo.engine import stylize
    from modelzoo.images import save_image

    console = Console(stderr=True)
    history: list[dict[str, float]] = []
    # Below 120 columns the full line would be cut: drop the bar and shorten the loss labels.
    wide = console.width >= WIDE_TERMINAL
    columns = (TextColumn("{task.description}"), *((BarColumn(bar_width=20),) if wide else ()),
               TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[losses]}"),
               TextColumn("{task.fields[rate]} it/s"), TimeRemainingColumn())
    # The bar starts on the first progress event, so an error raised while the model loads is not
    # printed under an empty bar.
    # A bar redrawn in a file or pipe wraps and truncates; there the periodic loss lines are the log.
    bar = Progress(*columns, console=console, disable=not show or not console.is_terminal, transient=False)
    task = None

    def on_progress(event) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("stylize", total=event.iterations, losses="", rate="-")
        history.append({"scale": event.scale_index + 1, "iteration": event.iteration, **event.losses})
        where = f"scale {event.scale_index + 1}/{event.scale_count} {event.size[1]}x{event.size[0]}"
        if event.tile_index is not None:
            where += f" tile {event.tile_index + 1}"
        losses = (f"content {event.losses['content']:.3g}  style {event.losses['style']:.3g}  "
                  f"tv {event.losses['tv']:.3g}  total {event.losses['total']:.4g}")
        if wide:
            label, shown = where, losses
        else:
            label = where.removeprefix("scale ")
            shown = (f"c {event.losses['content']:.3g} s {event.losses['style']:.3g} "
                     f"tv {event.losses['tv']:.3g} = {event.losses['total']:.4g}")
        bar.update(task, description=label, completed=event.iteration, total=event.iterations, losses=shown,
                   rate=f"{event.iterations_per_second:.2f}")
        if event.print_due:
            bar.console.print(f"{where} iteration {event.iteration}/{event.iterations}: {losses}", soft_wrap=True)
        if event.snapshot is not None:
            save_image(event.snapshot, _numbered(output, event))
            _write_history(output, history)

    try:
        result = stylize(content, styles, options, callback=on_progress)
    finally:
        if task is not None:
            bar.stop()
    if options.save_every:
        _write_history(output, history)
    return result


def _numbered(output: Path, event) -> Path:
    scale = f"_s{event.scale_index + 1}" if event.scale_count > 1 else ""
    return output.with_name(f"{output.stem}{scale}_{event.iteration}{output.suffix}")


def _write_history(output: Path, history: list[dict[str, float]]) -> None:
    path = output.with_name(f"{output.stem}_losses.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["scale", "iteration", "content", "style", "tv", "total"])
        writer.writeheader()
        writer.writerows(history)


def _write_outputs(result, output: Path, upscale: int | None, upscale_model: str | None, options) -> None:
    from modelzoo.images import from_pil, save_image

    image = result.image
    if upscale:
        from modelzoo.upscale import upscale_image

        model = upscale_model or f"realesrgan_x{upscale}plus"
        logger.info("upscaling %dx with %s", upscale, model)
        image = from_pil(upscale_image(result.to_pil(), model, tile=options.tile or None, device=options.device))
    save_image(image, output)
    last = result.history[-1] if result.history else {}
    logger.info("wrote %s (%dx%d; final loss %.4g)", output, image.shape[-1], image.shape[-2], last.get("total", float("nan")))


def register(app: typer.Typer) -> None:
    """Add ``stylize`` to ``app``."""
    app.command("stylize", help=STYLIZE_HELP, no_args_is_help=True)(stylize_command)
