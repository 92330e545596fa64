"""Keep a collection in step with folders: file events (watchdog) trigger ordinary index runs.

Nothing is indexed here: each update is ``Engine.index`` on the folders that changed, so new,
changed, moved (same content hash: the vector is reused) and deleted files follow exactly the
rules of ``mbm index``, and an interrupted update resumes like any interrupted run.

- Debounced: events are gathered until :attr:`Watcher.debounce` seconds pass without one (or
  :data:`MAX_DELAY` since the first), then one run covers them all. A run indexes the nearest
  existing folder of each changed path, inside its root (the whole root when too many changed).
- Only paths an index run would look at count: image files (text sources for a text
  collection), sidecars (``.txt``, ``.xmp``: the item text of their image), folders; hidden
  folders and the collection's own store are ignored, so the catalog's writes never re-trigger.
- Unmount and remount: every :attr:`Watcher.poll` seconds each root is checked. A root that is
  gone, or that is suddenly an empty folder while the catalog holds items under it (an empty
  mount point), is paused: nothing under it is removed from the collection. When it is back
  (possibly as another file system) it is watched again and caught up with one index run.
- Stopping: :meth:`Watcher.stop` from another thread, or Ctrl-C (KeyboardInterrupt) in the
  thread running :meth:`Watcher.run`; the observer threads are stopped and joined either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mbm.errors import MbmError, MissingExtra
from mbm.indexer.scan import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, display_path

log = logging.getLogger(__name__)

MAX_DELAY = 30.0  # seconds: a steady stream of events still gets indexed this often
MAX_TARGETS = 32  # more changed folders than this: index the whole roots instead
SIDECAR_EXTENSIONS = frozenset({".txt", ".xmp"})
_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})
_TRIGGERS = IMAGE_EXTENSIONS | TEXT_EXTENSIONS | SIDECAR_EXTENSIONS


def _observer_classes() -> tuple[Any, Any, Any]:
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver
    except ImportError:
        raise MissingExtra("mbm watch", "watch", "watchdog") from None
    return Observer, PollingObserver, FileSystemEventHandler


@dataclass
class _Root:
    path: str
    identity: tuple[int, int] | None  # (st_dev, st_ino) of the folder watched now
    watch: Any = None  # the observer's handle
    paused: bool = False


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(path) else None


def _is_empty(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return True


class Watcher:
    """``Watcher(engine, roots).run()`` keeps ``engine``'s collection in step with ``roots`` until stopped."""

    def __init__(
        self,
        engine: Any,
        roots: Sequence[str],
        *,
        debounce: float = 2.0,
        poll: float = 2.0,
        notify: Callable[[str], None] | None = None,
        on_report: Callable[[Any], None] | None = None,
        quiet: bool = False,
    ):
        self.engine = engine
        self.roots = [_Root(os.path.abspath(os.path.expanduser(r)), None) for r in roots]
        self.debounce = max(0.0, float(debounce))
        self.poll = max(0.05, float(poll))
        self.notify = notify or (lambda message: log.info("%s", message))
        self.on_report = on_report
        self.quiet = quiet
        self.runs = 0  # index runs made (for tests and callers that want to know)
        self.last_folders: list[str] = []  # what the last run indexed
        self._store = os.path.abspath(str(engine.folder))
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._first = self._last = 0.0
        self._stop = threading.Event()
        self._observer: Any = None
        self._handler: Any = None

    # -- events (observer threads) -------------------------------------------------------------
    def _relevant(self, path: str, is_directory: bool) -> bool:
        if path == self._store or path.startswith(self._store + os.sep):
            return False
        root = self._root_of(path)
        if root is None:
            return False
        inside = os.path.relpath(path, root.path)
        if any(part.startswith(".") for part in inside.split(os.sep) if part not in (".", "")):
            return False
        # an image collection's .txt is a sidecar, a text collection's its content: either way a trigger
        return is_directory or os.path.splitext(path)[1].lower() in _TRIGGERS

    def _kind(self) -> str:
        try:
            return str(self.engine.catalog().meta().get("kind", "image")) if self.engine.exists else "image"
        except MbmError:
            return "image"

    def _root_of(self, path: str) -> _Root | None:
        for root in self.roots:
            if path == root.path or path.startswith(root.path.rstrip(os.sep) + os.sep):
                return root
        return None

    def on_event(self, event: Any) -> None:
        """Record one watchdog event (called on the observer's threads)."""
        if event.event_type in _IGNORED_EVENTS or (event.is_directory and event.event_type == "modified"):
            return
        paths = [os.fsdecode(event.src_path)]
        if getattr(event, "dest_path", None):
            paths.append(os.fsdecode(event.dest_path))
        wanted = [p for p in paths if self._relevant(p, event.is_directory)]
        if not wanted:
            return
        with self._cond:
            now = time.monotonic()
            if not self._pending:
                self._first = now
            self._last = now
            self._pending.update(wanted)
            self._cond.notify_all()

    # -- the loop (the caller's thread) --------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        """Catch up once, then follow events until :meth:`stop` or Ctrl-C."""
        observer_cls, polling_cls, handler_cls = _observer_classes()
        watcher = self

        class Handler(handler_cls):  # type: ignore[misc, valid-type]
            def on_any_event(self, event: Any) -> None:
                watcher.on_event(event)

        self._handler = Handler()
        self._observer = observer_cls()
        self._polling_cls = polling_cls
        try:
            for root in self.roots:
                self._attach(root)
            self._observer.start()
            self._update([r.path for r in self.roots if not r.paused])
            if not self.quiet:
                shown = ", ".join(display_path(r.path) for r in self.roots)
                self.notify(f"watching {shown} for collection {self.engine.name!r} (Ctrl-C to stop)")
            while not self._stop.is_set():
                with self._cond:
                    self._cond.wait(timeout=self._timeout())
                self._supervise()
                due = self._take_due()
                if due:
                    self._update(self._targets(due))
        finally:
            self._observer.stop()
            self._observer.join(timeout=10)

    def _timeout(self) -> float:
        if not self._pending:
            return self.poll
        now = time.monotonic()
        wait = min(self.debounce - (now - self._last), MAX_DELAY - (now - self._first))
        return max(0.02, min(self.poll, wait))

    def _take_due(self) -> set[str]:
        with self._cond:
            now = time.monotonic()
            if not self._pending or (now - self._last < self.debounce and now - self._first < MAX_DELAY):
                return set()
            due, self._pending = self._pending, set()
            return due

    def _targets(self, paths: set[str]) -> list[str]:
        """The folders to index for these changed paths: each one's nearest existing folder inside its root."""
        folders: set[str] = set()
        for path in paths:
            root = self._root_of(path)
            if root is None or root.paused:
                continue
            folder = path if os.path.isdir(path) else os.path.dirname(path)
            while folder != root.path and not os.path.isdir(folder):
                folder = os.path.dirname(folder)
            folders.add(folder)
        if len(folders) > MAX_TARGETS:
            folders = {r.path for r in self.roots if not r.paused}
        ordered = sorted(folders, key=len)
        kept: list[str] = []
        for f in ordered:  # a folder inside another one is covered by it
            if not any(f == k or f.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
                kept.append(f)
        return kept

    def _update(self, folders: Sequence[str]) -> None:
        """One index run over ``folders`` (those still there and not paused)."""
        folders = [f for f in folders if os.path.isdir(f) and not self._paused_root(f)]
        if not folders:
            return
        try:
            report = self.engine.index(folders, texts=True if self._kind() == "text" else None, notify=self.notify)
        except MbmError as e:  # e.g. a folder vanished since the event: the next event or poll catches up
            self.notify(f"update skipped: {e}")
            return
        self.runs += 1
        self.last_folders = list(folders)
        if self.on_report is not None:
            self.on_report(report)
        elif not self.quiet and (report.indexed or report.reused or report.removed or report.skipped):
            self.notify(
                f"updated: indexed {report.indexed}, reused {report.reused} (moved {report.moved}), "
                f"removed {report.removed}, skipped {len(report.skipped)} — {report.total_items} items"
            )

    def _paused_root(self, folder: str) -> bool:
        root = self._root_of(folder)
        return root is None or root.paused

    # -- roots that go away and come back --------------------------------------------------------
    def _attach(self, root: _Root) -> None:
        root.identity = _identity(root.path)
        if root.identity is None or self._looks_unmounted(root):
            self._pause(root)
            return
        try:
            root.watch = self._observer.schedule(self._handler, root.path, recursive=True)
        except OSError as e:  # inotify's watch limit, typically: poll that root instead
            self.notify(f"cannot watch {display_path(root.path)} with inotify ({e}); polling it instead")
            self._observer = self._polling_cls()
            root.watch = self._observer.schedule(self._handler, root.path, recursive=True)
        root.paused = False

    def _detach(self, root: _Root) -> None:
        if root.watch is not None:
            try:
                self._observer.unschedule(root.watch)
            except (KeyError, OSError, RuntimeError):
                pass  # the emitter already died with its folder
            root.watch = None

    def _pause(self, root: _Root) -> None:
        if not root.paused and not self.quiet:
            self.notify(
                f"{display_path(root.path)} is gone or empty (unmounted?) — its items are kept; waiting for it to come back"
            )
        root.paused = True

    def _looks_unmounted(self, root: _Root) -> bool:
        """An empty folder where the collection holds items: a mount point whose file system is not mounted."""
        if not _is_empty(root.path) or not self.engine.exists:
            return False
        try:
            return len(self.engine.catalog().ids_under(root.path)) > 0
        except MbmError:
            return False

    def _supervise(self) -> None:
        for root in self.roots:
            now = _identity(root.path)
            if root.paused:
                if now is not None and not self._looks_unmounted(root):
                    self._detach(root)
                    self._attach(root)
                    if not root.paused:
                        if not self.quiet:
                            self.notify(f"{display_path(root.path)} is back — catching up")
                        self._update([root.path])
                continue
            if now is None or now != root.identity or self._looks_unmounted(root):
                self._detach(root)
                if now is not None and not self._looks_unmounted(root):  # replaced or remounted: watch the new one
                    self._attach(root)
                    self._update([root.path])
                else:
                    self._pause(root)
