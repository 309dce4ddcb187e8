"""CLI commands ``register`` and ``unregister``: add the user's own model file to the zoo, or remove it."""

from __future__ import annotations

from typing import Optional

import typer

from modelzoo.errors import OptionError

REGISTER_HELP = """Register a model file (a path, an http(s) URL or hf://OWNER/REPO/PATH[@REVISION]) as a user card.

The format is detected from the file's content (or given with --format); the file is copied into the
cache, converted, and the card is written to the user registry. Afterwards 'nstzoo stylize --model NAME'
uses it. --like CARD gives the file the layers, defaults and input contract of a built-in card.

\b
Examples:
  nstzoo register my_vgg.caffemodel --prototxt deploy.prototxt --name myvgg
  nstzoo register ~/models/VGG16_SOD_finetune_rough_faces.caffemodel --prototxt deploy.prototxt --like rough_faces
  nstzoo register https://example.org/models/net.t7 --name mynet --bgr --scale 255 --mean 103.939,116.779,123.68
  nstzoo register vgg19-d01eb7cb.pth --layout nspt_vgg19 --rename classifier.1.=classifier.0.
  nstzoo register hf://OWNER/REPO/model.onnx@main --rgb --scale 1
"""

UNREGISTER_HELP = """Remove the user card NAME and its cached files (built-in cards stay).

\b
Examples:
  nstzoo unregister myvgg
"""


def _floats(text: str, option: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"invalid {option} {text!r}: expected three comma-separated numbers, e.g. 103.939,116.779,123.68") from None
    if len(values) != 3:
        raise OptionError(f"invalid {option} {text!r}: expected three numbers, got {len(values)}")
    return values  # type: ignore[return-value]


def _names(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _renames(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    renames = []
    for pair in pairs:
        old, separator, new = pair.partition("=")
        if not separator or not old:
            raise OptionError(f"invalid --rename {pair!r}: expected OLD_PREFIX=NEW_PREFIX, e.g. classifier.1.=classifier.0.")
        renames.append((old, new))
    return tuple(renames)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OptionError(f"invalid --input-shape {text!r}: expected integers such as 1,3,224,224") from None
    if any(size <= 0 for size in shape):
        raise OptionError(f"invalid --input-shape {text!r}: every size must be positive")
    return shape


def register_model(
    source: str = typer.Argument(..., help="The weights file: a path, an http(s) URL or hf://OWNER/REPO/PATH[@REVISION]."),
    prototxt: Optional[str] = typer.Option(None, "--prototxt", help="The deploy prototxt of a Caffe model (path or URL)."),
    name: Optional[str] = typer.Option(None, "--name", help="Card name (lower-case letters, digits, _ . -); default: the --like card's name or the file's stem."),
    fmt: Optional[str] = typer.Option(None, "--format", help="caffe, torch7, onnx, pytorch or safetensors; default: detected from the content."),
    like: Optional[str] = typer.Option(None, "--like", help="Built-in card whose layers, defaults and input contract the file takes."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean in the model's channel order and scale, e.g. 103.939,116.779,123.68."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std in the model's scale, e.g. 0.229,0.224,0.225."),
    bgr: Optional[bool] = typer.Option(None, "--bgr/--rgb", help="Channel order the model expects."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Pixel value range the model expects: 255 or 1."),
    layout: str = typer.Option("", "--layout", help="State-dict layout of a .pth/.safetensors file: nspt_vgg19, nspt_vgg16, nspt_vgg or nspt_nin; default: from the weights."),
    rename: list[str] = typer.Option([], "--rename", help="Rename weight keys by prefix, OLD=NEW (repeatable)."),
    content_layers: Optional[str] = typer.Option(None, "--content-layers", help="Default content layers, comma-separated."),
    style_layers: Optional[str] = typer.Option(None, "--style-layers", help="Default style layers, comma-separated."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Input shape N,C,H,W when the file does not record it."),
    force: bool = typer.Option(False, "--force", help="Replace a user card of the same name."),
) -> None:
    from modelzoo.registration import ContractOptions, register

    if scale is not None and scale not in (1.0, 255.0):
        raise OptionError(f"invalid --scale {scale:g}: use 255 (pixels 0-255) or 1 (pixels 0-1)")
    channel_order = None
    if bgr is not None:
        channel_order = "BGR" if bgr else "RGB"
    contract = ContractOptions(
        mean=_floats(mean, "--mean") if mean else None,
        std=_floats(std, "--std") if std else None,
        channel_order=channel_order,
        value_range=scale,
    )
    result = register(source, name=name, fmt=fmt, prototxt=prototxt, like=like, contract=contract, layout=layout,
                      rename_keys=_renames(rename), content_layers=_names(content_layers),
                      style_layers=_names(style_layers), input_shape=_shape(input_shape), force=force)
    card = result.card
    typer.echo(f"registered {card.name} ({result.format}: {result.format_reason})")
    typer.echo(f"  card: {result.card_path}")
    typer.echo(f"  converted: {result.converted}")
    typer.echo(f"  input: {card.input.channel_order}, range 0-{card.input.value_range:g}, mean {list(card.input.mean)}")
    typer.echo(f"  layers ({len(result.layers)}): {', '.join(result.layers)}")
    typer.echo(f"  content layers: {', '.join(card.defaults.content_layers)}")
    typer.echo(f"  style layers: {', '.join(card.defaults.style_layers)}")
    for note in result.notes:
        typer.echo(f"  note: {note}")
    typer.echo(f"next: nstzoo stylize CONTENT STYLE -o OUT --model {card.name}")


def unregister_model(name: str = typer.Argument(..., help="The user card to remove.")) -> None:
    from modelzoo.registration import unregister

    for path in unregister(name):
        typer.echo(f"removed {path}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("register", help=REGISTER_HELP)(register_model)
    app.command("unregister", help=UNREGISTER_HELP)(unregister_model)
