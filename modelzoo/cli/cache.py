"""CLI commands of the ``cache`` group: ``ls``, ``verify``, ``rm NAME`` and ``prune``."""

from __future__ import annotations

import typer

from modelzoo import cache, config
from modelzoo.cli.models import format_size
from modelzoo.errors import CacheError
from modelzoo.fetch import load_registry

CACHE_HELP = """Inspect and clean the model cache (NSTZOO_HOME, or the platform's user cache folder).

\b
Examples:
  nstzoo cache ls
  nstzoo cache verify
  nstzoo cache rm vgg19
  nstzoo cache prune
"""

LS_HELP = """List the cached models with their files, sizes and conversion state.

\b
Examples:
  nstzoo cache ls
  NSTZOO_HOME=/data/nstzoo nstzoo cache ls
"""

VERIFY_HELP = """Re-hash every cached file against the card's hash or the one recorded on first download.

Exits with status 1 when a file does not match.

\b
Examples:
  nstzoo cache verify
  nstzoo cache verify vgg19 open_nsfw
"""

RM_HELP = """Delete model NAME (its files and converted weights) from the cache.

\b
Examples:
  nstzoo cache rm vgg19
"""

PRUNE_HELP = """Delete partial downloads, temporary files and the folders of models no card knows.

\b
Examples:
  nstzoo cache prune
"""

app = typer.Typer(help=CACHE_HELP, no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@app.command("ls", help=LS_HELP)
def ls() -> None:
    models = cache.list_models(load_registry())
    typer.echo(f"cache: {config.cache_dir()}")
    if not models:
        typer.echo("no cached models; run 'nstzoo fetch NAME' to add one")
        return
    for model in models:
        state = "converted" if model.converted else "not converted"
        unknown = "" if model.known else ", no card (removed by 'nstzoo cache prune')"
        typer.echo(f"{model.name}  {format_size(model.size)}  {state}{unknown}")
        for cached_file in model.files:
            typer.echo(f"  {cached_file.name}  {format_size(cached_file.size)}")


@app.command("verify", help=VERIFY_HELP)
def verify(names: list[str] = typer.Argument(None, help="Models to verify; all cached models when omitted.")) -> None:
    results = cache.verify(load_registry(), names or ())
    if not results:
        typer.echo("no cached files to verify")
        return
    for result in results:
        line = f"{result.status:9}  {result.model}/{result.file_name}"
        if result.status in ("ok", "mismatch"):
            line += f"  {result.algorithm} {result.actual} ({result.reference})"
        if result.status == "mismatch":
            line += f", expected {result.expected}"
        if result.status == "unchecked":
            line += "  no hash known"
        typer.echo(line)
    broken = sorted({result.model for result in results if result.status in ("mismatch", "missing")})
    if broken:
        count = sum(result.status in ("mismatch", "missing") for result in results)
        raise CacheError(
            f"{count} cached file(s) of {', '.join(broken)} are damaged or missing",
            hint=" && ".join(f"nstzoo fetch {name} --force" for name in broken),
        )


@app.command("rm", help=RM_HELP)
def rm(name: str = typer.Argument(..., help="Model name, as 'nstzoo cache ls' shows it.")) -> None:
    freed = cache.remove_model(name)
    typer.echo(f"removed {name} ({format_size(freed)})")


@app.command("prune", help=PRUNE_HELP)
def prune() -> None:
    removed = cache.prune(load_registry())
    for path, size in removed:
        typer.echo(f"removed {path} ({format_size(size)})")
    typer.echo(f"freed {format_size(sum(size for _, size in removed))}")


def register(parent: typer.Typer) -> None:
    """Add the ``cache`` group to ``parent``."""
    parent.add_typer(app, name="cache")
