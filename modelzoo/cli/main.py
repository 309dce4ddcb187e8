"""The ``nstzoo`` command: wires the command modules and turns errors into one line and an exit status."""

from __future__ import annotations

import importlib
import logging
import sys

import click
import typer

from modelzoo import config

COMMAND_MODULES = ("models", "cache", "convert", "stylize", "register", "upscale", "doctor")

app = typer.Typer(
    name="nstzoo",
    help="The neural-style model zoo: fetch, convert and run style-transfer models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"modelzoo.cli.{_name}").register(app)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logging.DEBUG if config.debug() else logging.INFO
    for name in ("modelzoo", "converters", "registry"):
        package_logger = logging.getLogger(name)
        package_logger.setLevel(level)
        package_logger.addHandler(handler)
        package_logger.propagate = False


def _error_line(error: BaseException) -> str:
    message = str(error) or type(error).__name__
    hint = getattr(error, "hint", "")
    return f"error: {message}" + (f"\nnext: {hint}" if hint else "")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; known errors print one line (and a hint) and exit 1, tracebacks only with NSTZOO_DEBUG=1."""
    _setup_logging()
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as error:
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the CLI's last line of defence
        if config.debug():
            raise
        click.echo(_error_line(error), err=True)
        if not getattr(error, "hint", ""):
            click.echo("(set NSTZOO_DEBUG=1 to see the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
