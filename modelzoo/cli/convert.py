"""CLI command ``convert``: one file of any format to graph.json + weights.safetensors, with no registry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

CONVERT_HELP = """Convert a model file to DIR (graph.json + weights.safetensors), outside the registry and cache.

The format is detected from the file's content unless --format is given. --verify runs the independent
reference on random input (OpenCV for Caffe and Torch7, onnxruntime for ONNX) and prints each compared
layer's relative error ||ours - reference|| / ||reference||.

\b
Examples:
  nstzoo convert model.t7 -o converted/ --verify
  nstzoo convert VGG_ILSVRC_19_layers.caffemodel --prototxt deploy.prototxt -o vgg19/ --verify
  nstzoo convert model.onnx -o out/ --input-shape 1,3,256,256 --verify
  nstzoo convert vgg19-d01eb7cb.pth -o vgg19_pt/ --layout nspt_vgg19
"""


def convert_model(
    source: Path = typer.Argument(..., help="The model file."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write graph.json and weights.safetensors into."),
    fmt: Optional[str] = typer.Option(None, "--format", help="caffe, torch7, onnx, pytorch or safetensors; default: detected."),
    prototxt: Optional[Path] = typer.Option(None, "--prototxt", help="Deploy prototxt of a Caffe model."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Input shape N,C,H,W, e.g. 1,3,224,224."),
    layout: str = typer.Option("", "--layout", help="State-dict layout for .pth/.safetensors (nspt_vgg19, nspt_vgg16, nspt_vgg, nspt_nin)."),
    rename: list[str] = typer.Option([], "--rename", help="Rename weight keys by prefix, OLD=NEW (repeatable)."),
    verify: bool = typer.Option(False, "--verify", help="Compare every layer with the independent reference on random input."),
) -> None:
    from converters.formats import ConvertOptions, convert, detect_format
    from converters.graph import save_converted
    from modelzoo.cli.register import _renames, _shape

    if not source.is_file():
        raise typer.BadParameter(f"{source} is not a file", param_hint="SOURCE")
    if fmt is None:
        fmt, reason = detect_format(source, prototxt)
        typer.echo(f"format: {fmt} ({reason})")
    options = ConvertOptions(prototxt=prototxt, input_shape=_shape(input_shape), layout=layout, rename_keys=_renames(rename))
    spec, weights = convert(fmt, source, options)
    folder = save_converted(output, spec, weights)
    typer.echo(f"converted {source} to {folder}: {len(spec.nodes)} layers, {len(weights)} tensors")
    typer.echo(f"layers: {', '.join(spec.node_names)}")
    if verify:
        _print_verification(fmt, source, spec, weights, options)


def _print_verification(fmt: str, source: Path, spec, weights, options) -> None:
    from converters.verify import NoReferenceError, verify

    try:
        errors = verify(fmt, source, spec, weights, options)
    except NoReferenceError as error:
        typer.echo(f"verify: {error}")
        return
    if not errors:
        typer.echo("verify: the reference produced no layer that could be compared")
        return
    width = max(len(error.layer) for error in errors)
    typer.echo(f"verify: {len(errors)} layers compared with the reference (relative error)")
    for error in errors:
        typer.echo(f"  {error.layer.ljust(width)}  {error.op:<16} {str(list(error.shape)):<20} {error.relative_error:.2e}")
    worst = max(errors, key=lambda error: error.relative_error)
    typer.echo(f"worst: {worst.layer} {worst.relative_error:.2e}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("convert", help=CONVERT_HELP)(convert_model)
