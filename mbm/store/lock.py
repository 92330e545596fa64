"""One writer per collection: index runs and cache writes hold the collection's lock.

A file lock (``filelock``: ``fcntl.flock`` on POSIX, released by the kernel when the
holder dies, so a crashed run never leaves a stale lock). Searches never wait for it:
they only try it, without blocking, before rewriting a derived cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from mbm.errors import CollectionError

log = logging.getLogger(__name__)

LOCK_FILE = "index.lock"


class CollectionBusy(CollectionError):
    """Another process holds the collection's lock (an index run)."""


class CollectionLock:
    """``with lock.hold(wait=True, on_wait=print):`` for index runs; ``with lock.attempt() as ok:`` for caches."""

    def __init__(self, folder: Path, name: str = ""):
        self.path = Path(folder) / LOCK_FILE
        self.name = name or Path(folder).name
        # thread_local=False: the Engine's threads share one holder; counted, so nested holds are fine
        self._lock = filelock.FileLock(self.path, thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    @contextlib.contextmanager
    def hold(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the lock for an index run; wait for another run (telling ``on_wait`` once) or refuse."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            message = f"another `mbm index` run is writing collection {self.name!r}"
            if not wait:
                raise CollectionBusy(
                    f"{message} — wait for it to finish, or run without --no-wait to queue behind it"
                ) from None
            if on_wait is not None:
                on_wait(f"{message}; waiting for it to finish (Ctrl-C to stop, --no-wait to refuse instead)")
            self._lock.acquire()
        except OSError as e:
            raise CollectionError(
                f"collection folder {self.path.parent} is on a read-only file system or not writable ({e.strerror}) — "
                "searching and `mbm info` work there; to index, make the store writable or use another --store"
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def attempt(self) -> Iterator[bool]:
        """Try to take the lock without waiting; yields whether this process holds it now."""
        if self._lock.is_locked:  # held by this process (an index run): nested use
            self._lock.acquire()
            try:
                yield True
            finally:
                self._lock.release()
            return
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            yield False
            return
        except OSError as e:  # a read-only store: nobody can write caches there, so nobody needs to
            log.debug("cannot take %s (%s)", self.path, e)
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()
