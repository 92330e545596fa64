"""The CLI through its real entry point, and help text for every command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_images
from typer.testing import CliRunner

from mbm.cli import app


def mbm(*args, store, check=True):
    exe = Path(sys.executable).with_name("mbm")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mbm"]
    env = {**os.environ, "MBM_HOME": str(store), "MBM_OFFLINE": "1"}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_index_and_search_end_to_end(tmp_path):
    photos = tmp_path / "photos"
    paths = make_images(photos, 6)
    (photos / "broken.jpg").write_text("nope")
    store = tmp_path / "store"
    first = mbm("index", str(photos), "-m", "mbm-tiny", "--json", store=store, check=False)
    assert first.returncode == 3, first.stderr  # finished, but a file was skipped
    report = json.loads(first.stdout)
    assert report["indexed"] == 6 and report["skipped"][0]["path"].endswith("broken.jpg")
    assert "broken.jpg: not an image" in first.stderr

    out = mbm("search", "--image", str(paths[2]), "--json", "-k", "3", store=store)
    doc = json.loads(out.stdout)
    assert doc["hits"][0]["path"] == str(paths[2]) and doc["hits"][0]["score"] > 0.999
    assert {"width", "height", "id", "modified", "size"} <= set(doc["hits"][0])

    bare = mbm("search", "a red car", "--paths", "-k", "4", store=store)
    lines = bare.stdout.splitlines()
    assert len(lines) == 4 and all(Path(p).exists() for p in lines)
    table = mbm("search", "a red car", "-k", "2", store=store).stdout.splitlines()
    assert table[0].split()[0] == "1" and len(table) == 2

    info = json.loads(mbm("info", "--json", store=store).stdout)
    assert info["collections"][0]["items"] == 6 and info["collections"][0]["model"] == "mbm-tiny"


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["search", "red car", "-c", "nope"], 1, "no collection 'nope'"),
        (["index", "/definitely/not/here"], 2, "does not exist"),
        (["search", "red car", "-k", "0"], 2, "at least 1"),
        (["search"], 2, "nothing to search for"),
        (["index", ".", "-m", "no-such-model"], 1, "is not known"),
    ],
)
def test_user_mistakes_give_one_line_and_no_traceback(tmp_path, args, code, message):
    proc = mbm(*args, store=tmp_path / "store", check=False)
    assert proc.returncode == code
    assert message in proc.stderr and "Traceback" not in proc.stderr


COMMANDS = [
    "index",
    "search",
    "info",
    "collections",
    "check",
    "models",
    "train",
    "train-fusion",
    "eval",
    "serve",
    "data build",
    "import",
    "duplicates",
    "tags",
    "watch",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert "Example" in result.output or command == "collections"


def test_every_registered_command_is_tested_and_documented():
    registered = {c.name for c in app.registered_commands}
    registered |= {f"{g.name} {c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands}
    assert registered == set(COMMANDS)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in registered:
        assert f"mbm {name}" in readme, f"README does not show `mbm {name}`"


# -- usage errors through the real entry point ----------------------------------------------------
@pytest.mark.parametrize(
    "args,message",
    [
        (["frobnicate"], "No such command"),
        (["search", "--bogus", "x"], "No such option"),
        (["index"], "Missing argument"),
        (["search", "-k", "abc", "x"], "Invalid value for '--top'"),
    ],
)
def test_usage_errors_print_the_usage_line_and_exit_2(tmp_path, args, message):
    proc = mbm(*args, store=tmp_path / "store", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Usage: mbm" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"]])
def test_help_through_the_entry_point(tmp_path, args):
    proc = mbm(*args, store=tmp_path / "store")
    assert "Usage" in proc.stdout and "Traceback" not in proc.stderr


# -- hostile names and texts, --print0, --image, --texts (the entry point, in this process) ---------
def cli(*args):
    """``mbm ARGS`` through ``mbm.cli.main``: (exit code, stdout bytes, stderr text)."""
    import contextlib
    import io

    from mbm.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code, out.buffer.getvalue(), err.buffer.getvalue().decode("utf-8")


ESCAPE_NAME = "x\x1b[2J.png"
NEWLINE_NAME = "new\nline.png"
TWO_LINE_TEXT = "a red car\nat night \u202eevil"  # a newline and a bidi override survive indexing


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from conftest import pattern_image

    root = tmp_path_factory.mktemp("hostile")
    photos = root / "photos"
    make_images(photos, 3)
    for i, name in enumerate([ESCAPE_NAME, NEWLINE_NAME, "Vacation - Day 1.png", "café 東京.png"]):
        pattern_image(50 + i).save(photos / name)
    (photos / "bad\x1b]0;pwned\x07.jpg").write_text("not an image")
    store = root / "store"
    indexed = cli("index", photos, "-m", "mbm-tiny", "--store", store)
    (root / "captions.jsonl").write_text(
        json.dumps({"text": TWO_LINE_TEXT}) + "\n" + json.dumps({"text": "a blue sky"}) + "\n"
    )
    texts = cli("index", root / "captions.jsonl", "-c", "captions", "-m", "mbm-tiny", "--store", store)
    assert texts[0] == 0, texts[2]
    return {"photos": photos, "store": store, "indexed": indexed}


def _no_terminal_controls(data):
    text = data if isinstance(data, str) else data.decode("utf-8")
    return not any(c in text for c in "\x1b\x07\x9b\u202e")


def test_index_lines_escape_control_characters(hostile):
    code, out, err = hostile["indexed"]
    assert code == 3  # finished, one file skipped
    assert "skipped " in err and "bad\\x1b]0;pwned\\x07.jpg: not an image" in err
    assert _no_terminal_controls(err) and _no_terminal_controls(out)


def test_search_table_escapes_names_and_texts_and_keeps_unicode(hostile):
    code, out, err = cli("search", "a red car", "-k", "10", "--store", hostile["store"])
    assert code == 0, err
    table = out.decode("utf-8")
    assert "x\\x1b[2J.png" in table and "new\\nline.png" in table and "café 東京.png" in table
    assert len(table.splitlines()) == 7 and _no_terminal_controls(table)
    code, out, err = cli("search", "a red car", "-c", "captions", "--store", hostile["store"])
    table = out.decode("utf-8")
    assert "a red car\\nat night \\u202eevil" in table and len(table.splitlines()) == 2 and _no_terminal_controls(table)


def test_hits_table_escapes_texts_of_any_origin():
    from mbm.cli.output import hits_table
    from mbm.retrieval.searcher import Hit

    table = hits_table([Hit(1, 0.5, 7, "/c.txt", 1, "a \x1b]0;pwned\x07 title \x9b5m \udc80")])
    assert table == "   1   0.500  a \\x1b]0;pwned\\x07 title \\x9b5m \\udc80"


def test_json_keeps_exact_values(hostile):
    _, out, _ = cli("search", "a red car", "-k", "10", "--json", "--store", hostile["store"])
    paths = {h["path"] for h in json.loads(out)["hits"]}
    assert str(hostile["photos"] / ESCAPE_NAME) in paths and str(hostile["photos"] / NEWLINE_NAME) in paths
    assert _no_terminal_controls(out)  # escaped by JSON, not changed
    _, out, _ = cli("search", "a red car", "-c", "captions", "--json", "--store", hostile["store"])
    assert TWO_LINE_TEXT in {h["text"] for h in json.loads(out)["hits"]}
    assert _no_terminal_controls(out)


def test_paths_refuses_a_newline_and_print0_writes_raw_bytes(hostile):
    code, out, err = cli("search", "a red car", "-k", "10", "--paths", "--store", hostile["store"])
    assert code == 2 and out == b""
    assert "new\\nline.png holds a newline" in err and "--print0" in err and "Traceback" not in err
    code, out, err = cli("search", "a red car", "-k", "10", "--print0", "--store", hostile["store"])
    assert code == 0, err
    items = out.split(b"\0")
    assert items[-1] == b"" and len(items) == 8
    assert (
        os.fsencode(hostile["photos"] / NEWLINE_NAME) in items and os.fsencode(hostile["photos"] / ESCAPE_NAME) in items
    )
    code, out, err = cli("search", "a red car", "-c", "captions", "--paths", "--store", hostile["store"])
    assert code == 2 and "--print0" in err  # texts too
    code, out, err = cli("search", "a red car", "-c", "captions", "--print0", "--store", hostile["store"])
    assert TWO_LINE_TEXT.encode() in out.split(b"\0")


def test_paths_on_a_terminal_are_escaped():
    from mbm.cli.output import path_lines

    assert path_lines(["/p/x\x1b[2J.png", "/p/é.png"], terminal=True) == "/p/x\\x1b[2J.png\n/p/é.png\n".encode()
    assert path_lines(["/p/x\x1b[2J.png"]) == b"/p/x\x1b[2J.png\n"  # piped: raw


def test_image_option_is_one_image_term_and_repeats(hostile):
    vacation = hostile["photos"] / "Vacation - Day 1.png"
    code, out, err = cli("search", "--image", vacation, "-k", "1", "--json", "--store", hostile["store"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["terms"] == [{"weight": 1.0, "kind": "image", "value": str(vacation)}]
    assert doc["hits"][0]["path"] == str(vacation) and doc["hits"][0]["score"] > 0.999
    other = hostile["photos"] / "img0001.png"
    code, out, err = cli("search", "3:10 to Yuma", "-i", vacation, "-i", other, "--json", "--store", hostile["store"])
    assert [(t["kind"], t["weight"]) for t in json.loads(out)["terms"]] == [
        ("text", 1.0),
        ("image", 1.0),
        ("image", 1.0),
    ]


def test_missing_image_is_a_usage_error_naming_it_escaped(hostile):
    missing = hostile["photos"] / "gone\x1b[2J - Day 2.png"
    code, _, err = cli("search", "--image", missing, "--store", hostile["store"])
    assert code == 2 and "query image" in err and "gone\\x1b[2J - Day 2.png does not exist" in err
    assert _no_terminal_controls(err)


def test_print0_and_json_together_are_refused(hostile):
    code, _, err = cli("search", "x", "--json", "--print0", "--store", hostile["store"])
    assert code == 2 and "give one of them" in err


def test_index_texts_flag_reads_text_files_under_folders(tmp_path):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "a.txt").write_text("one\ntwo\n")
    (notes / "sub" / "b.txt").write_text("three\n")
    code, out, err = cli(
        "index", notes, "--texts", "-c", "notes", "-m", "mbm-tiny", "--json", "--store", tmp_path / "store"
    )
    assert code == 0, err
    assert json.loads(out)["total_items"] == 3
    code, out, err = cli("info", "--json", "--store", tmp_path / "store")
    assert json.loads(out)["collections"][0]["kind"] == "text"


def test_ctrl_c_says_what_is_kept(tmp_path, monkeypatch):
    from mbm.engine import Engine

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "collections", staticmethod(interrupted))
    code, _, err = cli("info", "--store", tmp_path / "store")
    assert code == 130 and "interrupted — everything committed so far is kept" in err


def test_log_lines_escape_control_characters():
    import logging

    from mbm.cli.output import SafeFormatter

    record = logging.LogRecord("mbm", logging.WARNING, __file__, 1, "cannot read %s", ("x\x1b[2J.png",), None)
    assert SafeFormatter("mbm: %(message)s").format(record) == "mbm: cannot read x\\x1b[2J.png"
