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


_CLI_HANDLER_NAME = "nstzoo-cli"


def _setup_logging() -> None:
    """Send the packages' INFO logs (DEBUG with NSTZOO_DEBUG=1) to the current ``sys.stderr``, with one handler."""
    level = logging.DEBUG if config.debug() else logging.INFO
    for name in ("modelzoo", "converters", "registry"):
        package_logger = logging.getLogger(name)
        package_logger.setLevel(level)
        for old in [handler for handler in package_logger.handlers if handler.get_name() == _CLI_HANDLER_NAME]:
            package_logger.removeHandler(old)  # its stream may be an earlier, closed sys.stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_CLI_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package_logger.addHandler(handler)


def _error_line(error: BaseException) -> str:
    message = str(error) or type(error).__name__
    hint = getattr(error, "hint", "")
    return f"error: {message}" + (f"\nnext: {hint}" if hint else "")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; known errors print one line (and a hint) and exit 1, tracebacks only with NSTZOO_DEBUG=1."""
    _setup_logging()
    try:
        code = app(args=argv, standalone_mode=False)
        # Without standalone mode, click returns the code of `raise typer.Exit(code)` instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
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
        if not getattr(error, "hint", "") and not _is_input_error(error):
            click.echo("(set NSTZOO_DEBUG=1 to see the traceback)", err=True)
        sys.exit(1)


def _is_input_error(error: BaseException) -> bool:
    """Return whether ``error`` reports bad input (an option, image, card or model file), whose message is enough."""
    from converters.errors import ConversionError
    from modelzoo.errors import ImageError, OptionError
    from registry.errors import RegistryError

    return isinstance(error, (OptionError, ImageError, RegistryError, ConversionError))


if __name__ == "__main__":
    main()
