"""`mbm watch`: real file operations (create, modify, move, delete, unmount-like disappearance) followed."""

import os
import shutil
import threading
import time

import pytest
from conftest import make_images, pattern_image

pytest.importorskip("watchdog")

from mbm.indexer.watch import Watcher  # noqa: E402
from mbm.store.catalog import Catalog  # noqa: E402

TIMEOUT = 60.0  # generous: a loaded CI machine runs the tiny model slowly


def _indexed(eng) -> dict[str, str]:
    """path -> content hash, read through a connection of our own (the watcher's thread owns the Engine's)."""
    catalog = Catalog.open(eng.folder / "catalog.sqlite", readonly=True)
    try:
        return dict(catalog.conn.execute("SELECT path, hash FROM items"))
    finally:
        catalog.close()


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - the catalog may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _settled(watcher, quiet: float = 1.5) -> int:
    """The number of runs once none has started for ``quiet`` seconds (late events of earlier steps are done)."""
    runs, since = watcher.runs, time.monotonic()
    deadline = since + TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if watcher.runs != runs:
            runs, since = watcher.runs, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return runs
    raise AssertionError("the watcher never settled")


@pytest.fixture
def watching(tmp_path, engine_factory):
    root = tmp_path / "photos"
    make_images(root, 2)
    eng = engine_factory()
    messages: list[str] = []
    watcher = Watcher(eng, [str(root)], debounce=0.3, poll=0.2, notify=messages.append)
    errors: list[BaseException] = []

    def run():
        try:
            watcher.run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_for(lambda: len(_indexed(eng)) == 2, "the first catch-up run")
    yield root, eng, watcher, messages
    watcher.stop()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the watcher did not stop"
    assert not errors, errors


def test_follows_create_modify_move_delete(watching):
    root, eng, watcher, _ = watching
    new = root / "new.png"
    pattern_image(50).save(new)
    _wait_for(lambda: str(new) in _indexed(eng), "a new file")
    before = _indexed(eng)[str(new)]

    pattern_image(51).save(new)  # new content, same name
    _wait_for(lambda: _indexed(eng).get(str(new)) not in (None, before), "a modified file")
    modified = _indexed(eng)[str(new)]

    (root / "sub").mkdir()
    moved = root / "sub" / "moved.png"
    os.rename(new, moved)
    _wait_for(lambda: str(moved) in _indexed(eng) and str(new) not in _indexed(eng), "a moved file")
    assert _indexed(eng)[str(moved)] == modified  # same content: its vector was reused

    moved.unlink()
    _wait_for(lambda: str(moved) not in _indexed(eng), "a deleted file")
    assert len(_indexed(eng)) == 2
    # the store's own writes and hidden folders never trigger runs
    runs = _settled(watcher)
    (root / ".hidden").mkdir()
    pattern_image(60).save(root / ".hidden" / "x.png")
    time.sleep(1.5)
    assert watcher.runs == runs and len(_indexed(eng)) == 2, watcher.last_folders


def test_a_root_that_goes_away_is_paused_and_caught_up_when_back(watching, tmp_path):
    root, eng, watcher, messages = watching
    away = tmp_path / "unmounted"
    os.rename(root, away)  # the drive is gone
    _wait_for(lambda: any("gone or empty" in m for m in messages), "the root to be paused")
    root.mkdir()  # an empty mount point where the drive was
    time.sleep(1.5)
    assert len(_indexed(eng)) == 2, "an empty mount point must not empty the collection"
    pattern_image(70).save(away / "while_away.png")
    root.rmdir()
    os.rename(away, root)  # mounted again
    _wait_for(lambda: str(root / "while_away.png") in _indexed(eng), "the catch-up after the remount")
    assert len(_indexed(eng)) == 3
    pattern_image(71).save(root / "after.png")  # and it is watched again
    _wait_for(lambda: str(root / "after.png") in _indexed(eng), "a file after the remount")


def test_stop_is_clean_without_events(tmp_path, engine_factory):
    root = tmp_path / "photos"
    make_images(root, 1)
    watcher = Watcher(engine_factory(), [str(root)], debounce=0.1, poll=0.1, quiet=True)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    watcher.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and watcher.runs >= 1
    shutil.rmtree(root)
