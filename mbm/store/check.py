"""``mbm check``: what is wrong with a collection, and what can be repaired without losing data.

Checks the catalog's integrity, embeddings of the wrong size, rows whose files are gone,
the derived caches (vector index, query encoder) and temporary files left by a crash.
Repairs only what is derived or already lost: a row is removed only when its file is
gone from a folder that is still there (a folder that is missing as a whole may be an
unmounted drive: its rows are kept and reported).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mbm.atomic import stale_temp
from mbm.models.query_encoder import QUERY_ENCODER_DIR
from mbm.store.catalog import Catalog, CatalogState
from mbm.store.lock import CollectionLock
from mbm.store.vectors import (
    INDEX_GLOB,
    LEGACY_INDEX_FILE,
    STAMP_FILE,
    VectorIndex,
    ensure_saved,
    read_stamp,
    vectors_fresh,
)


@dataclass
class Problem:
    kind: str  # "integrity", "embedding", "missing", "unmounted", "vectors", "orphan", "temp", "query-encoder"
    detail: str
    fixable: bool
    fixed: bool = False


@dataclass
class CheckReport:
    collection: str
    items: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing left wrong (everything found was fixed, or nothing was found)."""
        return all(p.fixed for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "items": self.items,
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
        }


def _missing_rows(catalog: Catalog) -> tuple[list[str], dict[str, int]]:
    """Paths whose file is gone from an existing folder; and missing folders with their row counts."""
    gone: list[str] = []
    folders: dict[str, int] = {}
    folder_exists: dict[str, bool] = {}
    for path, _ids in catalog.paths():
        if os.path.lexists(path):
            continue
        parent = os.path.dirname(path)
        if parent not in folder_exists:
            folder_exists[parent] = os.path.isdir(parent)
        if folder_exists[parent]:
            gone.append(path)
        else:
            folders[parent] = folders.get(parent, 0) + 1
    return gone, folders


def _faiss_problems(
    folder: Path, state: CatalogState, stamp: dict[str, Any] | None
) -> list[tuple[Problem, list[Path]]]:
    if not vectors_fresh(folder, state):
        why = (
            "missing"
            if stamp is None
            else (
                "made for another catalog"
                if stamp.get("catalog_id") != state.catalog_id
                else f"at generation {stamp.get('generation')}, catalog at {state.generation}"
            )
        )
        return [(Problem("vectors", f"vector index is stale ({why}); it is rebuilt from the catalog", True), [])]
    if VectorIndex.load(folder, state.catalog_id) is None:
        return [(Problem("vectors", "vector index file cannot be read; it is rebuilt from the catalog", True), [])]
    return []


def _cache_problems(
    catalog: Catalog, folder: Path, fingerprint: str, faiss_cache: bool
) -> list[tuple[Problem, list[Path]]]:
    state = catalog.state()
    stamp = read_stamp(folder)
    out = _faiss_problems(folder, state, stamp) if faiss_cache else []
    named = (stamp or {}).get("file") if (stamp or {}).get("catalog_id") == state.catalog_id else None
    orphans = [p for p in [*folder.glob(INDEX_GLOB), folder / LEGACY_INDEX_FILE] if p.exists() and p.name != named]
    if orphans:
        size = sum(p.stat().st_size for p in orphans)
        out.append(
            (Problem("orphan", f"{len(orphans)} old vector index file(s), {size / 2**20:.1f} MiB", True), orphans)
        )
    qe = folder / QUERY_ENCODER_DIR
    with contextlib.suppress(OSError, ValueError):
        source = json.loads((qe / "source.json").read_text())
        if source.get("fingerprint") != fingerprint:
            out.append(
                (
                    Problem(
                        "query-encoder",
                        "exported query encoder belongs to other weights; it is exported again on the next search",
                        True,
                    ),
                    [qe],
                )
            )
    return out


def check_collection(
    name: str,
    folder: Path,
    catalog: Catalog,
    lock: CollectionLock,
    *,
    fix: bool = False,
    save_vectors: Callable[[Catalog, Path], Any] = ensure_saved,
    faiss_cache: bool = True,
) -> CheckReport:
    """Find problems; with ``fix`` (and a writable ``catalog``) repair the fixable ones. ``save_vectors``
    brings the searched index up to date after a fix; ``faiss_cache=False`` (a collection searched through
    Milvus) leaves the FAISS files out of the check."""
    report = CheckReport(name, catalog.count())
    integrity = [r[0] for r in catalog.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
    for line in integrity[:20]:
        report.problems.append(
            Problem(
                "integrity",
                f"SQLite: {line} — restore the catalog from a backup, or index into a new --collection",
                False,
            )
        )
    bad = catalog.bad_embeddings()
    if bad:
        report.problems.append(
            Problem(
                "embedding",
                f"{len(bad)} embedding(s) do not have {catalog.meta().get('dim')} "
                "dimensions; removed, they are embedded again by the next index run",
                True,
            )
        )
    from mbm.store.tokens import bad_tokens

    bad_tok = bad_tokens(catalog)
    if bad_tok:
        report.problems.append(
            Problem(
                "tokens",
                f"{len(bad_tok)} re-ranking token blob(s) have the wrong length; "
                "cleared, they are computed again by the next index run of their folder",
                True,
            )
        )
    gone, unmounted = _missing_rows(catalog)
    if gone:
        report.problems.append(
            Problem(
                "missing", f"{len(gone)} indexed file(s) no longer exist (e.g. {gone[0]}); their rows are removed", True
            )
        )
    for parent, n in sorted(unmounted.items())[:20]:
        report.problems.append(
            Problem(
                "unmounted",
                f"folder {parent} is missing ({n} file(s)): an unmounted drive? "
                "Rows kept; re-index its parent folder once it is gone for good",
                False,
            )
        )
    caches = _cache_problems(catalog, folder, catalog.meta().get("fingerprint", ""), faiss_cache)
    report.problems.extend(p for p, _ in caches)
    with lock.attempt() as idle:  # with no index run active, every temp file is left over
        temps = stale_temp(folder, min_age_s=0 if idle else 3600)
    if temps:
        report.problems.append(Problem("temp", f"{len(temps)} temporary file(s) left by an interrupted write", True))
    if not fix:
        return report
    with lock.hold(wait=False):
        temps = stale_temp(folder, min_age_s=0)  # no writer can be active while we hold the lock
        if bad_tok:
            from mbm.store.tokens import clear_tokens

            clear_tokens(catalog, bad_tok)
            next(p for p in report.problems if p.kind == "tokens").fixed = True
        _fix(report, catalog, folder, bad, gone, caches, temps, save_vectors)
    report.items = catalog.count()
    return report


def _fix(
    report: CheckReport,
    catalog: Catalog,
    folder: Path,
    bad: list[int],
    gone: list[str],
    caches: list[tuple[Problem, list[Path]]],
    temps: list[Path],
    save_vectors: Callable[[Catalog, Path], Any],
) -> None:
    by_kind = {p.kind: p for p in report.problems}
    if bad:
        catalog.remove_ids(bad)
        by_kind["embedding"].fixed = True
    if gone:
        catalog.remove_paths(gone)
        by_kind["missing"].fixed = True
    for problem, paths in caches:
        for path in paths:
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        problem.fixed = problem.kind != "vectors"
    for path in temps:
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if "temp" in by_kind:
        by_kind["temp"].fixed = True
    if "vectors" in by_kind:
        (folder / STAMP_FILE).unlink(missing_ok=True)  # stale or unreadable: rebuilt below
        by_kind["vectors"].fixed = True
    save_vectors(catalog, folder)  # also after the removals above
