"""`--preview`: thumbnails only where the terminal can show them; nothing extra when stdout is not a terminal."""

import base64
import io

import pytest
from conftest import make_images
from typer.testing import CliRunner

from mbm.cli.preview import detect, iterm2, kitty, show_hits


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


def _table(hits):
    return "\n".join(f"{h.rank} {h.path}" for h in hits)


@pytest.fixture
def hits(tmp_path, engine_factory):
    make_images(tmp_path / "photos", 3)
    eng = engine_factory()
    eng.index([tmp_path / "photos"])
    return eng.search("x", k=3)


def test_off_when_stdout_is_not_a_terminal(hits):
    pipe = io.StringIO()
    show_hits(hits, _table, stream=pipe, env={"TERM": "xterm-kitty", "KITTY_WINDOW_ID": "1"}, stdin=Terminal())
    assert pipe.getvalue() == _table(hits) + "\n"
    assert "\x1b" not in pipe.getvalue()


def test_cli_preview_through_a_pipe_is_the_plain_table(hits, tmp_path, monkeypatch):
    from mbm.cli import app

    monkeypatch.setenv("MBM_HOME", str(tmp_path / "store"))
    monkeypatch.setenv("KITTY_WINDOW_ID", "1")  # even inside kitty: CliRunner's stdout is not a terminal
    plain = CliRunner().invoke(app, ["search", "x", "-k", "3"])
    shown = CliRunner().invoke(app, ["search", "x", "-k", "3", "--preview"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == plain.stdout and "\x1b" not in shown.stdout


@pytest.mark.parametrize(
    "env,want",
    [
        ({"TERM": "xterm-kitty"}, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, "iterm2"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "iterm2"),
        ({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"}, None),  # tmux drops the sequences
        ({"TERM": "dumb", "KITTY_WINDOW_ID": "3"}, None),
        ({"TERM": "xterm-256color"}, None),  # stdin not a terminal: no sixel question is asked
    ],
)
def test_protocol_from_what_the_terminal_says(env, want):
    assert detect(Terminal(), env, stdin=io.StringIO()) == want


def test_kitty_and_iterm2_sequences(hits):
    png = b"\x89PNG" + bytes(9000)
    seq = kitty(png)
    assert seq.startswith("\x1b_Ga=T,f=100,q=2,") and seq.endswith("\x1b\\")
    parts = seq.split("\x1b\\")[:-1]
    assert len(parts) == 3 and all(p.startswith("\x1b_G") for p in parts)
    assert ",m=1;" in parts[0] and parts[1].startswith("\x1b_Gm=1;") and parts[2].startswith("\x1b_Gm=0;")
    assert base64.b64decode("".join(p.split(";", 1)[1] for p in parts)) == png
    it = iterm2(png)
    assert it.startswith(f"\x1b]1337;File=inline=1;size={len(png)};") and it.endswith("\x07")

    term = Terminal()
    show_hits(hits, _table, stream=term, env={"TERM": "xterm-kitty"})
    out = term.getvalue()
    assert out.count("\x1b_Ga=T") == len(hits)
    for h in hits:
        assert f"{h.rank} {h.path}" in out


def test_a_missing_file_gets_no_picture(hits):
    import os

    os.unlink(hits[0].path)
    term = Terminal()
    show_hits(hits, _table, stream=term, env={"TERM_PROGRAM": "iTerm.app", "TERM": "xterm"})
    assert term.getvalue().count("\x1b]1337;File=") == len(hits) - 1
