"""Leakage-safe train/val/test assignment for manifest rows.

Rows are linked when they share a ``group`` id (the same drawing filed twice, skin-tone
variants, one emoji concept in every style, one pictogram concept across icon sets), an
identical normalised caption, or a ``links`` key (a source-level identity such as the Noto
glyph two flags share). Each linked component goes to one split as a whole, so no picture or
caption seen in training reappears in val/test. Val and test keep one item per component
*and style*: near-duplicates would make retrieval metrics ambiguous, while the drawings of
one concept in different styles stay together so a cross-style test can pair them. The
other items of such a component are dropped rather than moved to train (that would leak them).

Nothing here looks at rendered pixels: groups, links and the split hashes come from source
identities (SVG/file content hashes of the *source* files, codepoints, concept names) and
captions, so the same packages give the same splits on any machine, whatever the renderers'
bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from .common import file_sha256, normalize_caption, row_image_path

HELDOUT_SOURCES = ("tuxpaint",)  # GPL-2.0: evaluation only, never in a split we train on
SPLITS = ("train", "val", "test", "heldout")


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving keeps trees flat
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _group_of(row: dict) -> str:
    return str(row.get("group") or f"image:{row['image']}")


def components(rows: list[dict]) -> list[list[int]]:
    """Indices of ``rows`` linked by equal group ids, normalised captions or ``links`` keys."""
    uf = _UnionFind(len(rows))
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        keys = [f"g\0{_group_of(row)}"] + [f"c\0{normalize_caption(c)}" for c in row["captions"]]
        # source-level identities shared by rows of different groups (Noto draws Norway's
        # flag for Svalbard & Jan Mayen too: one glyph of the font)
        keys += [f"l\0{k}" for k in row.get("links") or ()]
        for key in keys:
            if key.endswith("\0"):
                continue  # an empty caption links nothing
            j = first.setdefault(key, i)
            if j != i:
                uf.union(i, j)
    comps: dict[int, list[int]] = defaultdict(list)
    for i in range(len(rows)):
        comps[uf.find(i)].append(i)
    return list(comps.values())


def _style_of(row: dict) -> str:
    return f"{row.get('source')}/{row.get('style') or row.get('source')}"


def _pick_key(row: dict) -> tuple:
    # shortest image path first: the base emoji ("1f44b.png") before its skin-tone variants
    return (len(row["image"]), row["image"])


def assign_splits(
    rows: list[dict],
    *,
    val: int,
    test: int,
    seed: int,
    heldout_sources: tuple[str, ...] = HELDOUT_SOURCES,
    report: Counter | None = None,
) -> list[dict]:
    """Return copies of ``rows`` with ``split`` set; rows dropped to avoid leaks are left out.

    - A row that already has a ``split`` (Fashion-MNIST's own train/test, Tux Paint's
      "heldout", a user's choice) keeps it and links nothing.
    - Rows of ``heldout_sources`` without a split go to "heldout".
    - The rest are linked into components (shared group id or normalised caption); the
      components are shuffled with ``random.Random(seed)`` (after sorting, so the result does
      not depend on input order) and fill val, then test, up to ``val``/``test`` rows, one row
      per component and style (``style``, else ``source``); everything else goes to train.
    ``report`` (a Counter) receives the count of rows dropped from val/test.
    """
    report = report if report is not None else Counter()
    out = [dict(r) for r in rows]
    free = []
    for i, row in enumerate(out):
        if row.get("split"):
            continue
        if row.get("source") in heldout_sources:
            row["split"] = "heldout"
        else:
            free.append(i)
    sub = [out[i] for i in free]
    comps = [[free[j] for j in comp] for comp in components(sub)]
    comps.sort(key=lambda c: min(_group_of(out[i]) for i in c))
    random.Random(seed).shuffle(comps)
    left = {"val": val, "test": test}
    drop: set[int] = set()
    for comp in comps:
        by_source: dict[str, list[int]] = defaultdict(list)
        for i in comp:
            by_source[_style_of(out[i])].append(i)
        keep = {min(idx, key=lambda i: _pick_key(out[i])) for idx in by_source.values()}
        target = next((s for s in ("val", "test") if 0 < len(keep) <= left[s]), "train")
        if target != "train":
            left[target] -= len(keep)
            extra = [i for i in comp if i not in keep]
            drop.update(extra)
            if extra:
                report[f"split: near-duplicate of a {target} item dropped (would leak or blur metrics)"] += len(extra)
        for i in comp:
            out[i]["split"] = target
    return [row for i, row in enumerate(out) if i not in drop]


SPLIT_HASH_COVERS = ("source", "style", "group", "origin", "source_sha256", "captions")


def row_identity(row: dict, base: Path | None = None) -> list[str]:
    """What a row *is*, independent of how it was rendered: source, style, group, origin
    (package + file/codepoint/icon name) and the source file's content hash when known.

    A row with neither ``origin`` nor ``source_sha256`` (a user's own picture, which is its
    own source) is identified by its ``sha256`` field, else the sha256 of its image file
    (relative paths resolved against ``base``). Every row our builders write has an origin.
    """
    ident = [str(row.get(k) or "") for k in SPLIT_HASH_COVERS[:-1]]
    if not row.get("origin") and not row.get("source_sha256"):
        ident[-1] = row.get("sha256") or file_sha256(row_image_path(row, Path(base or ".")))
    return ident


def split_hash(rows: list[dict], base: Path | None = None) -> str:
    """sha256 over the sorted (identity, captions) pairs of ``rows`` (:func:`row_identity`).

    Independent of row order, folder location and the PNG bytes (another machine's
    rsvg-convert or FreeType draws slightly different pixels): two builds with equal hashes
    hold the same items with the same captions in each split.
    """
    items = [[row_identity(row, base), list(row["captions"])] for row in rows]
    items.sort()
    blob = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def split_hashes(rows: list[dict], base: Path | None = None) -> dict[str, str]:
    """``{split: split_hash(rows of that split)}`` for every split present."""
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_split[str(row.get("split"))].append(row)
    return {s: split_hash(r, base) for s, r in sorted(by_split.items())}
