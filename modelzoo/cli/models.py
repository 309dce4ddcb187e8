"""CLI commands about the models of the registry: ``list``, ``info NAME`` and ``fetch NAME``."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from modelzoo import cache
from modelzoo.fetch import FetchProgress, fetch, load_registry
from registry import ModelCard

LIST_HELP = """List the models of the registry with their family, format, size and cache state.

\b
Examples:
  nstzoo list
  NSTZOO_HOME=/data/nstzoo nstzoo list
"""

INFO_HELP = """Show the card of model NAME: files, sources, hashes, input, layers, defaults and licence.

\b
Examples:
  nstzoo info vgg19
  nstzoo info open_nsfw
"""

FETCH_HELP = """Download, verify and convert model NAME into the cache (nothing is downloaded when it is cached).

\b
Examples:
  nstzoo fetch vgg19
  nstzoo fetch open_nsfw --force
  NSTZOO_MIRROR=http://mirror.example.org/nstzoo nstzoo fetch vgg19
  NSTZOO_OFFLINE=1 nstzoo fetch vgg19      # only succeeds when vgg19 is cached
"""


def format_size(size: int | None) -> str:
    """Return ``size`` bytes in decimal units (kB, MB, GB), or '?' when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _cache_state(card: ModelCard) -> str:
    if cache.is_converted(card.name):
        return "converted"
    if cache.is_cached(card):
        return "cached"
    return "-"


def _size_text(card: ModelCard) -> str:
    """Return the card's total size; ">= N" when only some file sizes are published, "?" when none is."""
    if card.size is not None:
        return format_size(card.size)
    known = [spec.size for spec in card.files if spec.size is not None]
    return f">= {format_size(sum(known))}" if known else "?"


def list_models() -> None:
    registry = load_registry()
    rows = [("NAME", "FAMILY", "FORMAT", "SIZE", "CACHE")]
    for card in registry:
        rows.append((card.name, card.family, card.format, _size_text(card), _cache_state(card)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _card_lines(card: ModelCard) -> Iterator[str]:
    yield f"{card.name}: {card.title}"
    yield f"  family {card.family}, task {card.task}, format {card.format}, size {_size_text(card)}"
    yield f"  licence: {card.licence}"
    if card.paper:
        yield f"  paper: {card.paper}"
    if card.description:
        yield f"  {card.description}"
    yield f"  card: {card.path}" + ("" if card.builtin else " (user card)")
    yield f"  cache: {_cache_state(card)} in {cache.model_dir(card.name)}"

    yield "files:"
    for spec in card.files:
        yield f"  {spec.name} ({spec.role}, {format_size(spec.size)})"
        if spec.sha256:
            yield f"    sha256 {spec.sha256}"
        if spec.md5:
            yield f"    md5 {spec.md5}"
        if not spec.sha256 and not spec.md5:
            yield "    no published hash: the sha256 is recorded on first download"
        if spec.hash_note:
            yield f"    note: {spec.hash_note}"
        for source in spec.sources:
            yield f"    source {source.text}"
        if not spec.sources:
            yield "    no download source" + (f": {card.install_hint}" if card.install_hint else "")

    if card.task == "features":
        contract = card.input
        yield "input:"
        yield (f"  {contract.channel_order}, values 0-{contract.value_range:g}, mean {list(contract.mean)}, "
               f"std {list(contract.std)}" + (f", size {contract.size}" if contract.size else ""))
        yield f"layers ({len(card.layers)}):"
        for line in textwrap.wrap(", ".join(card.layers), width=96):
            yield f"  {line}"
        defaults = card.defaults
        yield "defaults:"
        yield f"  content layers {', '.join(defaults.content_layers)}; style layers {', '.join(defaults.style_layers)}"
        yield (f"  content weight {defaults.content_weight:g}, style weight {defaults.style_weight:g}, "
               f"tv weight {defaults.tv_weight:g}")
    if card.upscale is not None:
        yield f"upscale: x{card.upscale.scale}, architecture {card.upscale.architecture}"
    if card.caveats:
        yield "caveats:"
        for caveat in card.caveats:
            yield f"  - {caveat}"


def info(name: str = typer.Argument(..., help="Model name, as 'nstzoo list' shows it.")) -> None:
    card = load_registry().get(name)
    for line in _card_lines(card):
        typer.echo(line)


@contextmanager
def _progress_bar() -> Iterator[FetchProgress | None]:
    """Yield a progress callback that draws rich bars on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        tasks: dict[str, int] = {}

        def update(file_name: str, done: int, total: int | None) -> None:
            if file_name not in tasks:
                tasks[file_name] = progress.add_task(file_name, total=total)
            progress.update(tasks[file_name], completed=done, total=total)

        yield update


def fetch_model(
    name: str = typer.Argument(..., help="Model name, as 'nstzoo list' shows it."),
    force: bool = typer.Option(False, "--force", help="Download every file again even when it is cached."),
    convert: bool = typer.Option(True, "--convert/--no-convert", help="Convert the files after the download."),
) -> None:
    with _progress_bar() as progress:
        result = fetch(name, force=force, progress=progress, convert=convert)
    verb = {"download": "downloaded", "update": "updated", "fetch": "already cached"}[result.action]
    typer.echo(f"{name}: {verb}")
    for role, path in result.files.items():
        typer.echo(f"  {role}: {path}")
    if result.converted is not None:
        typer.echo(f"  converted: {result.converted}")


def register(app: typer.Typer) -> None:
    """Add ``list``, ``info`` and ``fetch`` to ``app``."""
    app.command("list", help=LIST_HELP)(list_models)
    app.command("info", help=INFO_HELP)(info)
    app.command("fetch", help=FETCH_HELP)(fetch_model)
