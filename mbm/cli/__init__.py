"""The ``mbm`` command. Each command parses arguments, calls the library, formats the result.

Results go to stdout; progress, warnings and errors to stderr. Exit codes: 0 ok,
1 error, 2 bad usage, 3 finished but some files were skipped.
"""

from __future__ import annotations

import gc
import io
import logging
import os
import sys
import warnings
from typing import NoReturn

import typer

from mbm.cli import (
    collection_commands,
    data_commands,
    eval_commands,
    index_commands,
    library_commands,
    output,
    scale_commands,
    search_commands,
    serve_commands,
    train_commands,
)
from mbm.errors import MbmError

app = typer.Typer(
    name="mbm",
    help="Cross-modal search: index folders of images or texts, then search them with text or images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# `mbm --help` lists the commands in the order they are registered
index_commands.register(app)  # index
search_commands.register(app)  # search
collection_commands.register(app)  # info, collections, models, check
serve_commands.register(app)  # serve
data_commands.register(app)  # data build
train_commands.register(app)  # train, train-fusion
eval_commands.register(app)  # eval
scale_commands.register(app)  # import
library_commands.register(app)  # duplicates, tags, watch


def _click_exception() -> type[Exception]:
    """The base of the usage errors the installed typer raises. typer 0.26 and later carry their
    own copy of click (``typer._click``), whose exceptions ``click.ClickException`` does not
    catch; earlier versions raise click's own."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException  # type: ignore[assignment]
    return ClickException


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: turns MbmError into one clean line (traceback with --debug or MBM_DEBUG=1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("MBM_DEBUG"))
    args = [a for a in args if a != "--debug"]
    # the command is the process: tokenizers must not warn about forks (training data workers)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # odd metadata in a photo is not the user's problem: the skip lines report real failures
    warnings.filterwarnings("ignore", module="PIL")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(output.SafeFormatter("mbm: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    click_exception = _click_exception()
    try:
        code = app(args=args, prog_name="mbm", standalone_mode=False)
    except MbmError as e:
        if debug:
            raise
        output.err(f"error: {e}")
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):  # typer < 0.28 turns Ctrl-C into Abort
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except click_exception as e:  # usage errors: the usage line, then the error; exit 2
        shown = io.StringIO()
        e.show(file=shown)  # type: ignore[attr-defined]
        output.err(shown.getvalue().rstrip("\n"))
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    if code == 130:  # typer >= 0.28 turns Ctrl-C into a returned 130
        _interrupted()
    # the command is the process and it is ending: spare the interpreter's shutdown a collection over every object
    # torch and the model left behind (0.3-0.5 s after a checkpoint run); finalizers still run
    gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> NoReturn:
    output.err("interrupted — everything committed so far is kept; run the same command again to resume")
    sys.exit(130)
