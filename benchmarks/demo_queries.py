"""How well a model answers everyday queries on the demo folder: the rank of the intended picture.

    python benchmarks/demo_queries.py --model mbm-offline

Indexes data/demo (37 drawings and 6 photos) into a throwaway store and runs queries worded
unlike the training captions ("kitty", "a yellow fruit", "something to read"); a query counts
as answered at K when one of its intended pictures ranks within the top K. The figures are
given for all queries, for the 24 drawing queries (those of results before the photos came:
"kitty" and "photo camera" now also accept the cat and the photographer photo, and any
photo may now outrank a drawing) and for the 6 photo queries: once as ``mbm search`` answers
(re-ranked where the model's re-ranking is calibrated, as the bundled model's is) and once with
the dual encoder alone (``--no-rerank``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import report

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
QUERIES = {  # query -> the demo pictures that answer it (file name stems)
    "red car": ["emoji_red_car"],
    "a blue car": ["emoji_blue_car"],
    "a yellow fruit": ["emoji_banana"],
    "bike": ["emoji_bicycle"],
    "kitty": ["emoji_cat_face", "photo_cat"],
    "puppy": ["emoji_dog_face", "clipart_dog_dog_01_drawn_with_strai_01"],
    "pony": ["emoji_horse_face"],
    "something to read": ["emoji_open_book"],
    "musical instrument": ["emoji_guitar", "emoji_violin"],
    "a boat": ["emoji_ship"],
    "fire truck": ["emoji_fire_engine"],
    "night sky with the moon": ["emoji_crescent_moon"],
    "photo camera": ["emoji_camera", "photo_photographer"],
    "computer": ["emoji_laptop"],
    "football": ["emoji_soccer_ball"],
    "a hat": ["emoji_top_hat"],
    "a slice of pizza": ["emoji_pizza"],
    "plane": ["emoji_airplane"],
    "a man made of snow": ["emoji_snowman"],
    "public transport": ["emoji_bus"],
    "pink flowers": ["emoji_cherry_blossom"],
    "a home": ["emoji_house", "clipart_house_big_house_01"],
    "wake up on time": ["emoji_alarm_clock"],
    "rain protection": ["emoji_umbrella"],
}
PHOTO_QUERIES = {  # queries only a photo answers (photo_*.jpg, from scikit-image); the emoji cat is no photo of a cat
    "a photo of a cat": ["photo_cat"],
    "a rocket on a launch pad": ["photo_rocket"],
    "a cup of coffee": ["photo_coffee"],
    "an astronaut": ["photo_astronaut"],
    "a man with a camera on a tripod": ["photo_photographer"],
    "galaxies in space": ["photo_galaxies"],
}
QUERIES.update(PHOTO_QUERIES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mbm-offline")
    ap.add_argument("--name", default=None, help="name for the results file (default: demo_queries)")
    args = ap.parse_args()
    from mbm import Engine

    orders = {"search": None, "no_rerank": 0}  # how Engine.search is asked: its default, and rerank=0
    ranks: dict[str, dict[str, int]] = {name: {} for name in orders}
    with tempfile.TemporaryDirectory() as store, Engine.open(store, model=args.model) as eng:
        eng.index([DEMO])
        n = eng.info().items
        for query, targets in QUERIES.items():
            for name, rerank in orders.items():
                hits = eng.search(query, k=n, rerank=rerank)
                ranks[name][query] = min(h.rank for h in hits if Path(h.path).stem in targets)

    def answered(got: dict[str, int], queries: list[str]) -> dict[int, float]:
        return {k: sum(got[q] <= k for q in queries) / len(queries) for k in (1, 3, 5)}

    photo_qs = [q for q in QUERIES if q in PHOTO_QUERIES]
    drawing_qs = [q for q in QUERIES if q not in PHOTO_QUERIES]

    def summary(got: dict[str, int]) -> dict:
        return {
            "answered_at": answered(got, list(QUERIES)),
            "drawing_queries": {"queries": len(drawing_qs), "answered_at": answered(got, drawing_qs)},
            "photo_queries": {"queries": len(photo_qs), "answered_at": answered(got, photo_qs)},
            "ranks": got,
        }

    result = {"model": args.model, "pictures": n, "queries": len(QUERIES), **summary(ranks["search"])}
    result["no_rerank"] = summary(ranks["no_rerank"])

    def pct(at: dict[int, float]) -> str:
        return " / ".join(f"{100 * v:.0f}%" for v in at.values())

    rows = [("model", f"{args.model} on data/demo ({n} pictures, {len(QUERIES)} queries)")]
    for name, label in (("search", "mbm search"), ("no_rerank", "--no-rerank")):
        got = ranks[name]
        rows += [
            (f"{label}: answered at 1 / 3 / 5", pct(answered(got, list(QUERIES)))),
            (f"{label}: drawing queries ({len(drawing_qs)})", pct(answered(got, drawing_qs))),
            (f"{label}: photo queries ({len(photo_qs)})", pct(answered(got, photo_qs))),
        ]
    rows.append(("ranks (mbm search)", ", ".join(f"{q!r}: {r}" for q, r in ranks["search"].items())))
    report(args.name or "demo_queries", result, rows)


if __name__ == "__main__":
    main()
