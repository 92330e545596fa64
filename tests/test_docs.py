"""README.md documents the command line: every command and option of ``mbm`` appears in it, and every
``mbm ...`` line of its shell examples parses against the real CLI (after sqlite-utils' tests/test_docs.py).

Each missing command, missing option and broken example is a failure of its own, named in the test id.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from mbm.cli import app

try:  # typer 0.26 and later carry their own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer raises click's own
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

README = Path(__file__).resolve().parent.parent / "README.md"
ROOT = typer.main.get_command(app)
SHELL_FENCES = ("bash", "sh", "shell", "console")
SEPARATORS = {"|", "||", "&&", ";", "&", "|&"}  # end one command, start the next


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _command_paths(command: Any = ROOT, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(("data", "build"), command) for every visible command and sub-group below ``command``, depth first."""
    found = []
    for name, sub in sorted(command.commands.items()):
        if not sub.hidden:
            found.append(((*path, name), sub))
            if _is_group(sub):
                found.extend(_command_paths(sub, (*path, name)))
    return found


def _long_options(command: Any) -> list[str]:
    """Every ``--long-name`` of a visible option (both halves of ``--flag/--no-flag``)."""
    names = []
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            names += [n for n in (*param.opts, *param.secondary_opts) if n.startswith("--")]
    return names


COMMANDS = _command_paths()
OPTIONS = [(path, option) for path, command in COMMANDS for option in _long_options(command)]


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def _mentions(text: str, words: str) -> bool:
    """``words`` appears as a whole: ``mbm train`` is not found in ``mbm train-fusion``, nor ``--rerank`` in
    ``--rerank-top``."""
    return re.search(rf"(?<![\w-]){re.escape(words)}(?![\w-])", text) is not None


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: "mbm " + " ".join(p))
def test_command_is_documented(readme, path):
    name = "mbm " + " ".join(path)
    assert _mentions(readme, name), f"README.md never mentions `{name}`: describe it under ## Commands"


@pytest.mark.parametrize(("path", "option"), OPTIONS, ids=[f"mbm {' '.join(p)} {o}" for p, o in OPTIONS])
def test_option_is_documented(readme, path, option):
    name = "mbm " + " ".join(path)
    assert _mentions(readme, option), f"README.md never mentions {option} of `{name}`: add it to its section"


def _shell_lines(text: str) -> list[str]:
    """The command lines of the README's shell code blocks: continuations joined, ``$ `` prompts removed
    (in a console block only prompted lines are commands, the rest is output)."""
    lines = []
    for fence, body in re.findall(r"^```(\w+)[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        if fence not in SHELL_FENCES:
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            elif fence == "console":
                continue
            if stripped and not stripped.startswith("#"):
                lines.append(stripped)
    return lines


def _mbm_commands(line: str) -> list[list[str]]:
    """The argument lists of every ``mbm`` command in a shell line (pipes, ``&&``, ``;``, redirections and
    trailing comments handled; ``...`` stands for options left out)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            segments.append([])
        elif set(token) <= set("<>&|") and ("<" in token or ">" in token):  # a redirection: drop its target
            if segments[-1] and segments[-1][-1].isdigit():
                segments[-1].pop()  # the file descriptor of 2>/dev/null
            skip_next = True  # a file, or the descriptor of 2>&1
        else:
            segments[-1].append(token)
    commands = []
    for words in segments:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # MBM_HOME=... mbm ...
            words = words[1:]
        if words and (words[0] == "mbm" or words[0].endswith("/mbm")):
            commands.append([w for w in words[1:] if w != "..."])
    return commands


EXAMPLES = [
    pytest.param(argv, id=" ".join(["mbm", *argv])[:100])
    for line in _shell_lines(README.read_text(encoding="utf-8"))
    for argv in _mbm_commands(line)
]


def test_readme_has_command_examples():
    assert len(EXAMPLES) >= 20, f"found only {len(EXAMPLES)} `mbm` command lines in README.md's shell blocks"


def _parse(argv: list[str]) -> None:
    """Parse ``mbm ARGV`` the way ``mbm.cli.main`` does, down to the command's own arguments, without running
    it: raises click's UsageError (unknown command or option, bad value, missing argument)."""
    args = [a for a in argv if a != "--debug"]  # mbm.cli.main takes --debug out before typer sees it
    command, name, ctx = ROOT, "mbm", None
    while _is_group(command) and args and not args[0].startswith("-"):
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        name, args = args[0], args[1:]
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click_exceptions.UsageError(f"no such command {name!r}", ctx)
        command = sub
    with command.make_context(name, args, parent=ctx, resilient_parsing=False):
        pass


@pytest.mark.parametrize("argv", EXAMPLES)
def test_readme_example_parses(argv):
    try:
        _parse(argv)
    except typer.Exit as e:  # --help
        assert e.exit_code == 0
    except click_exceptions.UsageError as e:
        pytest.fail(f"`mbm {shlex.join(argv)}` in README.md does not parse: {e.format_message()}")


def test_parse_catches_what_the_cli_refuses():
    """The checker itself: what the CLI would refuse is refused here, what it accepts is accepted."""
    _parse(["search", "red car", "--rerank-top", "200", "-k", "20"])
    _parse(["data", "build", "--out", "cache/x"])
    for bad in (
        ["serch", "red car"],  # no such command
        ["search", "red car", "--no-such-option"],
        ["search", "red car", "--top", "many"],  # not an integer
        ["index"],  # PATH... is required
        ["data", "biuld"],
    ):
        with pytest.raises(click_exceptions.UsageError):
            _parse(bad)


def test_shell_lines_are_split_like_a_shell():
    assert _mbm_commands("mbm search \"dog\" --paths | xargs -d '\\n' feh  # bare paths") == [
        ["search", "dog", "--paths"]
    ]
    assert _mbm_commands("MBM_HOME=/tmp/x mbm info --json 2>&1 && .venv/bin/mbm models > m.txt 2>/dev/null") == [
        ["info", "--json"],
        ["models"],
    ]
    assert _mbm_commands("mbm train m.jsonl --out runs/v2 ... --resume") == [
        ["train", "m.jsonl", "--out", "runs/v2", "--resume"]
    ]
    text = "```console\n$ mbm info \\\n    --json\nname  items\n```\n```python\nmbm = 1\n```\n"
    assert _shell_lines(text) == ["mbm info      --json"]
