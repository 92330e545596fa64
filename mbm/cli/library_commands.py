"""`mbm duplicates`, `mbm tags` and `mbm watch`: thin wrappers over mbm.retrieval.duplicates,
mbm.indexer.tagging / mbm.store.tags and mbm.indexer.watch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mbm.cli import output
from mbm.cli.options import CollectionOpt, JsonOpt, ModelOpt, StoreOpt
from mbm.config import DEFAULT_COLLECTION
from mbm.retrieval.duplicates import DEFAULT_THRESHOLD


def register(app: typer.Typer) -> None:
    app.command("duplicates")(duplicates)
    app.command("tags")(tags)
    app.command("watch")(watch)


def duplicates(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            "-t",
            help="Cosine at or above which two items count as near-identical (measured: benchmarks/duplicates_threshold.py).",
        ),
    ] = DEFAULT_THRESHOLD,
    as_json: JsonOpt = False,
) -> None:
    """Groups of near-identical images (re-encoded, resized, slightly cropped or rotated copies), largest first,
    with sizes and a suggested keeper (largest resolution, then oldest). Nothing is deleted.

    Example: mbm duplicates -c photos --threshold 0.95
    """
    from mbm.engine import Engine
    from mbm.retrieval.duplicates import check_threshold, find_duplicates

    check_threshold(threshold)
    with Engine.open(store, collection) as eng:
        groups = find_duplicates(eng.catalog(), threshold)
    if as_json:
        doc = {"collection": collection, "threshold": threshold, "groups": [g.as_dict() for g in groups]}
        typer.echo(output.json_text(doc))
        return
    if not groups:
        output.err(f"no near-duplicates in {collection!r} at threshold {threshold}")
        return
    typer.echo(duplicates_table(groups))
    spare = sum(g.reclaimable_bytes for g in groups)
    extra = sum(len(g.items) - 1 for g in groups)
    output.err(f"{len(groups)} groups; {extra} files beside their keepers, {output.human_size(spare)}")


def duplicates_table(groups: Any) -> str:
    lines = []
    for n, g in enumerate(groups, 1):
        lines.append(f"group {n}: {len(g.items)} items (cosine >= {g.min_similarity:.3f})")
        for i, item in enumerate(g.items):
            mark = "keep" if i == 0 else f"{item.similarity:.3f}"
            res = f"{item.width}x{item.height}" if item.width and item.height else "?"
            lines.append(f"  {mark:>5}  {res:>11}  {output.human_size(item.size or 0):>9}  {output.shown(item.path)}")
    return "\n".join(lines)


def tags(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    vocabulary: Annotated[
        Path | None,
        typer.Option(
            "--vocabulary",
            "--tags",
            help="Tag with these labels instead (a text file, one tag per line): zero-shot against the stored embeddings; every item is re-tagged, and later index runs keep using them.",
            show_default=False,
        ),
    ] = None,
    default_vocabulary: Annotated[
        bool,
        typer.Option("--default-vocabulary", help="Go back to the model's own labels (re-tags every item)."),
    ] = False,
    update: Annotated[
        bool,
        typer.Option("--update", help="Tag the items that have no tags yet now (index runs do it by themselves)."),
    ] = False,
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="Train a concat-fusion classifier (image embedding + the item's own text) on labelled data, a folder per class (FOLDER/<tag>/<image>), and tag with it from now on.",
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tags of a collection and how many items carry each (tags come from index runs).

    Example: mbm tags -c photos --vocabulary my_tags.txt
    """
    from mbm.engine import Engine
    from mbm.errors import UsageError
    from mbm.indexer.tagging import read_labels, retag
    from mbm.store.tags import VOCABULARY_KEY, tag_counts, tagging_progress

    if vocabulary is not None and default_vocabulary:
        raise UsageError("--vocabulary and --default-vocabulary contradict each other — give one of them")
    if train is not None and (vocabulary is not None or default_vocabulary):
        raise UsageError("--train tags with the classifier it trains — leave out --vocabulary/--default-vocabulary")
    labels = read_labels(vocabulary) if vocabulary is not None else None
    with Engine.open(store, collection, model=model) as eng:
        if train is not None:
            from mbm.indexer.tagging import train_concat

            output.err(f"tagged {train_concat(eng, train, notify=output.err)} items with the trained classifier")
        elif labels is not None or default_vocabulary or update:
            tagged = retag(eng, labels, reset=default_vocabulary, notify=output.err)
            output.err(f"tagged {tagged} items")
        catalog = eng.catalog()
        meta = catalog.meta()
        counts = tag_counts(catalog)
        done, total = tagging_progress(catalog, meta.get(VOCABULARY_KEY))
    source = meta.get("tags_source", "")
    if as_json:
        doc = {
            "collection": collection,
            "source": source,
            "items": total,
            "tagged": done,
            "tags": [c._asdict() for c in counts],
        }
        typer.echo(output.json_text(doc))
        return
    for c in counts:
        typer.echo(f"{c.items:>8}  {c.mean_score:5.2f}  {output.safe(c.tag)}")
    output.err(f"{len(counts)} tags ({source or 'none yet'}); {done} of {total} items tagged")
    if done < total:
        output.err("run `mbm index PATH` (or `mbm tags --update`) to tag the rest")


def watch(
    paths: Annotated[
        list[Path], typer.Argument(help="Folders to keep the collection in step with.", show_default=False)
    ],
    collection: CollectionOpt = DEFAULT_COLLECTION,
    store: StoreOpt = None,
    model: ModelOpt = None,
    debounce: Annotated[
        float,
        typer.Option("--debounce", help="Seconds of quiet after a change before the collection is updated."),
    ] = 2.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per update.")] = False,
) -> None:
    """Keep a collection in step with folders: new, changed, moved and deleted files are indexed as they
    happen (the same incremental rules as `mbm index`). Ctrl-C stops.

    Example: mbm watch ~/Pictures -c photos
    """
    from mbm.engine import Engine, check_index_args
    from mbm.indexer.watch import Watcher

    check_index_args([str(p) for p in paths])
    with Engine.open(store, collection, model=model) as eng:
        watcher = Watcher(eng, [str(p) for p in paths], debounce=debounce, notify=output.err, quiet=quiet)
        watcher.run()  # until Ctrl-C (KeyboardInterrupt: mbm.cli.main says what was kept)
