"""The CLI through its real entry point, and help text for every command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_images
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


COMMANDS = ["index", "search", "info", "collections", "models", "train", "eval", "data build"]


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
