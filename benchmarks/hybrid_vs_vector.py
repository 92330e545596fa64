"""Is hybrid search (vector + BM25 over the items' own text, reciprocal rank fusion) at least as good as vector?

    apt-get install -y --no-install-recommends mate-backgrounds plasma-workspace-wallpapers \
        lomiri-wallpapers-16.04 lomiri-wallpapers-20.04        # optional: 54 photos instead of 17
    python benchmarks/hybrid_vs_vector.py [--model mbm-offline]

The real photos of mbm's evaluation set (``mbm.train.evalsets.photos``), each with two hand-written
captions. Queries are captions; the right answer is the photo. The photos are laid out as four
libraries, each indexed with ``Engine.index`` (so the item text is what mbm itself extracts):

- ``camera``: camera file names (``DCIM/IMG_0001.jpg``): no useful text, the sanity case;
- ``named``: files named as people name them, here each photo's title (``ladybird.jpg``,
  ``colorfulcups.jpg``, ``greentock.jpg``: wallpaper titles are often not descriptive);
- ``captioned``: camera names plus a sidecar caption for every photo (``IMG_0001.jpg.txt``) holding its
  *other* caption; each caption queries the photo captioned with the other one;
- ``some captioned``: a sidecar for every third photo only (queries as above, over all photos).

Recall@1, @5 and MRR over all queries, per library and mode (vector, keyword, hybrid).
Results: benchmarks/results/hybrid_vs_vector.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MBM_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import report  # noqa: E402

MODES = ("vector", "keyword", "hybrid")
LIBRARIES = ("camera", "named", "captioned", "some captioned")
MAX_SIDE = 1024


def photos() -> list[tuple[str, Path, tuple[str, str]]]:
    from mbm.train.evalsets.photos import PHOTOS, source_path

    out = []
    for p in PHOTOS:
        src = source_path(p)
        if src is not None:
            out.append((p.id, src, (p.captions[0], p.captions[1])))
    return out


def lay_out(library: str, folder: Path, items: list) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Write the library; return photo id -> path and the (query, photo id) pairs."""
    from mbm.train.evalsets import load_photo

    paths, queries = {}, []
    for n, (pid, src, (first, second)) in enumerate(items):
        name = pid.split("_", 1)[1] if library == "named" and "_" in pid else pid
        target = folder / (f"{name}.jpg" if library == "named" else f"DCIM/IMG_{n:04d}.jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        load_photo(src, MAX_SIDE).save(target, quality=90)
        paths[pid] = str(target)
        captioned = library == "captioned" or (library == "some captioned" and n % 3 == 0)
        if captioned:  # the sidecar holds one caption, the other one is the query (both ways: two libraries' worth)
            Path(str(target) + ".txt").write_text(second + "\n")
            queries.append((first, pid))
        else:
            queries += [(first, pid), (second, pid)]
    return paths, queries


def score(eng, queries, paths, mode: str) -> dict:
    by_path = {v: k for k, v in paths.items()}
    ranks = []
    started = time.perf_counter()
    for text, pid in queries:
        hits = eng.search(text, k=len(paths), mode=mode)
        found = [by_path.get(h.path) for h in hits]
        ranks.append(found.index(pid) + 1 if pid in found else None)
    seconds = (time.perf_counter() - started) / max(1, len(queries))
    n = len(ranks)
    return {
        "R@1": round(100 * sum(r == 1 for r in ranks) / n, 1),
        "R@5": round(100 * sum(r is not None and r <= 5 for r in ranks) / n, 1),
        "MRR": round(sum(1 / r for r in ranks if r) / n, 3),
        "ms_per_query": round(1000 * seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mbm-offline")
    args = parser.parse_args()

    from mbm import Engine

    items = photos()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for library in LIBRARIES:
            folder = Path(tmp) / library.replace(" ", "_")
            paths, queries = lay_out(library, folder, items)
            with Engine.open(Path(tmp) / "store", library.replace(" ", "_"), model=args.model) as eng:
                eng.index([folder], workers=2)
                results[library] = {"queries": len(queries), **{m: score(eng, queries, paths, m) for m in MODES}}
    rows = []
    for library, r in results.items():
        for m in MODES:
            rows.append(
                (f"{library:<15} {m:<8}", f"R@1 {r[m]['R@1']:5.1f}  R@5 {r[m]['R@5']:5.1f}  MRR {r[m]['MRR']:.3f}")
            )
    verdict = all(r["hybrid"]["MRR"] >= r["vector"]["MRR"] for r in results.values())
    result = {
        "model": args.model,
        "photos": len(items),
        "rrf_k": 60,
        "libraries": results,
        "hybrid_at_least_as_good_everywhere": verdict,
    }
    report("hybrid_vs_vector", result, rows + [("hybrid >= vector (MRR) in every library", str(verdict))])


if __name__ == "__main__":
    main()
