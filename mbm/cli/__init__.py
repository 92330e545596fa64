"""The ``mbm`` command. Each command parses arguments, calls the library, formats the result.

Results go to stdout; progress, warnings and errors to stderr. Exit codes: 0 ok,
1 error, 2 bad usage, 3 finished but some files were skipped.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import typer

from mbm.cli import commands, train_commands
from mbm.errors import MbmError

app = typer.Typer(
    name="mbm",
    help="Cross-modal search: index folders of images or texts, then search them with text or images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
commands.register(app)
train_commands.register(app)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: turns MbmError into one clean line (traceback with --debug or MBM_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("MBM_DEBUG"))
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="mbm: %(message)s", stream=sys.stderr
    )
    try:
        code = app(args=args, prog_name="mbm", standalone_mode=False)
    except MbmError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted — everything committed so far is kept; run the same command again to resume", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click's usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
