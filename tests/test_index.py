"""Indexing through the library: incremental runs, moves, copies, deletions, bad files, search."""

import os
import shutil

import numpy as np
import pytest
from conftest import make_images, pattern_image

from mbm.errors import CollectionError, UsageError


def test_index_then_search_finds_exact_duplicate_first(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 12)
    shutil.copy(paths[3], photos / "copy_of_3.png")
    eng = engine_factory()
    report = eng.index([photos])
    assert (report.indexed, report.reused, report.total_items) == (12, 1, 13)
    hits = eng.search(paths[3], k=3)
    assert {h.path for h in hits[:2]} == {str(paths[3]), str(photos / "copy_of_3.png")}
    assert hits[0].score == pytest.approx(1.0, abs=1e-3) and hits[1].score == pytest.approx(1.0, abs=1e-3)
    assert hits[2].score < 0.999


def test_rerun_is_incremental(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    make_images(photos, 8)
    eng = engine_factory()
    eng.index([photos])
    again = eng.index([photos])
    assert (again.indexed, again.reused, again.unchanged, again.removed) == (0, 0, 8, 0)


def test_move_rename_reuses_vector_and_delete_removes(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 6)
    eng = engine_factory()
    eng.index([photos])
    (photos / "sub").mkdir()
    os.rename(paths[0], photos / "sub" / "renamed.png")
    paths[1].unlink()
    report = eng.index([photos])
    assert (report.indexed, report.moved, report.removed, report.total_items) == (0, 1, 2, 5)
    hits = eng.search(photos / "sub" / "renamed.png", k=10)
    assert hits[0].path == str(photos / "sub" / "renamed.png") and hits[0].score > 0.999
    assert str(paths[1]) not in {h.path for h in hits}


def test_changed_content_is_re_embedded(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 3)
    eng = engine_factory()
    eng.index([photos])
    pattern_image(99).save(paths[0])
    os.utime(paths[0], ns=(1, 10**18))
    report = eng.index([photos])
    assert (report.indexed, report.unchanged, report.total_items) == (1, 2, 3)


def test_bad_files_are_skipped_with_reasons_and_never_stop_the_run(tmp_path, engine_factory):
    from test_decode import png_with_header_size

    photos = tmp_path / "photos"
    make_images(photos, 3)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.jpg").write_text("not an image")
    (photos / "bomb.png").write_bytes(png_with_header_size(30000, 30000))
    bad_name = os.fsencode(str(photos)) + b"/caf\xe9.png"
    with open(bad_name, "wb") as f:
        pattern_image(5).save(f, "PNG")
    os.symlink(photos, photos / "loop")
    report = engine_factory().index([photos])
    reasons = {os.path.basename(p): r for p, r in report.skipped}
    assert report.indexed == 3
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.jpg"]
    assert "30000x30000" in reasons["bomb.png"]
    assert any("UTF-8" in r for r in reasons.values())
    assert "symlink loop" in reasons["loop"]


def test_failed_file_loses_its_old_vector(tmp_path, engine_factory):
    photos = tmp_path / "photos"
    paths = make_images(photos, 3)
    eng = engine_factory()
    eng.index([photos])
    paths[0].write_bytes(b"corrupted now")
    report = eng.index([photos])
    assert report.total_items == 2 and len(report.skipped) == 1


def test_filters_under_and_min_score(tmp_path, engine_factory):
    make_images(tmp_path / "a", 4)
    make_images(tmp_path / "b", 4, start=10)
    eng = engine_factory()
    eng.index([tmp_path / "a", tmp_path / "b"])
    hits = eng.search("anything", k=10, under=str(tmp_path / "b"))
    assert len(hits) == 4 and all(h.path.startswith(str(tmp_path / "b") + "/") for h in hits)
    unfiltered = eng.search("anything", k=10)
    assert unfiltered[0].score > unfiltered[-1].score
    threshold = (unfiltered[0].score + unfiltered[-1].score) / 2
    filtered = eng.search("anything", k=10, min_score=threshold)
    assert filtered and all(h.score >= threshold for h in filtered)  # some hits pass the filter...
    assert any(h.score < threshold for h in unfiltered)  # ...and some that it drops existed
    assert [h.id for h in filtered] == [h.id for h in unfiltered if h.score >= threshold]
    assert eng.search("anything", k=5, under=str(tmp_path / "nothing-here")) == []


def test_search_matches_exact_numpy_ranking(tmp_path, engine_factory, tiny_encoder):
    make_images(tmp_path / "p", 20)
    eng = engine_factory()
    eng.index([tmp_path / "p"])
    catalog = eng.catalog()
    ids, vecs = next(catalog.read_embeddings())
    q = tiny_encoder.encode_texts(["a red car"])[0]
    order = ids[np.argsort(-(vecs @ q))][:5]
    assert [h.id for h in eng.search("a red car", k=5)] == list(order)


def test_text_collection_and_image_to_text(tmp_path, engine_factory):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red car\n\na blue sky\nA dog on grass\n")
    eng = engine_factory("captions")
    report = eng.index([captions])
    assert report.total_items == 3 and eng.info().kind == "text"
    hits = eng.search("a blue sky", k=3)
    assert hits[0].text == "a blue sky" and hits[0].part == 3 and hits[0].score == pytest.approx(1, abs=1e-3)
    img = tmp_path / "q.png"
    pattern_image(1).save(img)
    assert len(eng.search(img, k=2)) == 2  # image -> text
    captions.write_text("a red car\na green tree\n")
    report = eng.index([captions])
    assert report.total_items == 2 and report.reused == 1 and report.indexed == 1


def test_jsonl_texts_and_bad_rows(tmp_path, engine_factory):
    good = tmp_path / "t.jsonl"
    good.write_text('{"text": "one"}\n{"text": "two"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    report = engine_factory("t").index([good, bad])
    assert report.total_items == 2
    assert "line 2" in report.skipped[0][1]


def test_collection_kind_and_model_mismatch_are_errors(tmp_path, engine_factory, tiny_encoder):
    from mbm import Engine

    make_images(tmp_path / "p", 2)
    eng = engine_factory()
    eng.index([tmp_path / "p"])
    (tmp_path / "c.txt").write_text("hello\n")
    with pytest.raises(CollectionError, match="holds images"):
        eng.index([tmp_path / "c.txt"])
    other = Engine.open(tmp_path / "store", model="ViT-B-32:openai")
    with pytest.raises(CollectionError, match="indexed with model 'mbm-tiny'"):
        other.search("x")


def test_user_errors(tmp_path, engine_factory):
    eng = engine_factory()
    with pytest.raises(UsageError, match="does not exist"):
        eng.index([tmp_path / "missing"])
    with pytest.raises(CollectionError, match="run `mbm index PATH`"):
        eng.search("x")
    (tmp_path / "empty").mkdir()
    eng.index([tmp_path / "empty"])
    with pytest.raises(CollectionError, match="is empty"):
        eng.search("x")
    make_images(tmp_path / "p", 1)
    eng.index([tmp_path / "p"])
    with pytest.raises(UsageError, match="at least 1"):
        eng.search("x", k=0)


def test_vanished_between_scan_and_decode(tmp_path, tiny_encoder):
    from mbm.indexer.embed import Failed, StageClock, make_preparer
    from mbm.indexer.scan import scan

    paths = make_images(tmp_path, 2)
    found = scan([tmp_path])
    paths[0].unlink()
    prepare = make_preparer(tiny_encoder.preprocess, 64, set(), 10**8, StageClock())
    result = prepare(found.files[0])
    assert isinstance(result, Failed) and "vanished" in result.reason


def _counted_preparer(held):
    """A prepare function that counts the files it started; files after the first batch (4) wait for ``held``."""
    import threading

    from mbm.indexer.decode import ImageFacts
    from mbm.indexer.embed import Decoded

    lock, started = threading.Lock(), [0]

    def prepare(entry):
        with lock:
            started[0] += 1
        if int(os.path.basename(entry.path).split(".")[0]) >= 4:
            held.wait()
        return Decoded(entry, entry.path, np.zeros((3, 2, 2), np.float32), ImageFacts(2, 2))

    return prepare, started


def _started_while_held(yield_cpu):
    """How many files had started when the consumer got the first batch, and a while after it let them go on."""
    import threading
    import time

    from mbm.indexer.embed import prepared_batches
    from mbm.indexer.scan import FileEntry

    entries = [FileEntry(f"/photos/{i}.jpg", 1, 0) for i in range(32)]
    held = threading.Event()
    prepare, started = _counted_preparer(held)
    batches = prepared_batches(entries, prepare, 4, 2, yield_cpu=yield_cpu)
    first = next(batches)
    at_first = started[0]  # files 0-3 done, 4 (and 5, unless its thread was still returning 3) waiting in prepare
    held.set()
    for _ in range(200):  # up to 2 s for the two threads to start more files, if they may
        if started[0] > at_first:
            break
        time.sleep(0.01)
    time.sleep(0.05)
    while_held = started[0]
    rest = [r for b in batches for r in b]
    assert [r.entry.path for r in [*first, *rest]] == [e.path for e in entries]
    return at_first, while_held


def test_decoding_takes_turns_with_a_cpu_model_and_runs_beside_a_gpu_one():
    import threading

    from mbm.indexer.embed import prepared_batches
    from mbm.indexer.scan import FileEntry

    # a CPU model computes on the decoders' cores: no file starts while the consumer holds a batch
    # (files 4 and 5 are the two threads' last before the pause: started by then, or a moment later)
    at_first, while_held = _started_while_held(yield_cpu=True)
    assert at_first in (5, 6) and while_held <= 6
    # a GPU model does not: decoding goes on meanwhile
    at_first, while_held = _started_while_held(yield_cpu=False)
    assert at_first in (5, 6) and while_held > 6
    # a consumer that stops while decoding is paused leaves no decoding thread waiting
    held = threading.Event()
    held.set()
    prepare, _ = _counted_preparer(held)
    stopped = threading.Event()

    def stop_early():
        for _ in prepared_batches([FileEntry(f"/p/{i}.jpg", 1, 0) for i in range(32)], prepare, 4, 2, yield_cpu=True):
            break
        stopped.set()

    threading.Thread(target=stop_early, daemon=True).start()
    assert stopped.wait(30)


def test_the_batch_size_follows_the_device_unless_given(tmp_path, tiny_encoder):
    from mbm.config import CUDA_BATCH_SIZE, DEFAULT_BATCH_SIZE, default_batch_size
    from mbm.indexer.runner import Indexer
    from mbm.store.catalog import Catalog

    catalog = Catalog.open(tmp_path / "catalog.sqlite", create=True)
    assert Indexer(tiny_encoder, catalog, tmp_path).batch_size == DEFAULT_BATCH_SIZE == default_batch_size("cpu")
    assert Indexer(tiny_encoder, catalog, tmp_path, batch_size=7).batch_size == 7
    assert default_batch_size("cuda") == default_batch_size("cuda:1") == CUDA_BATCH_SIZE > DEFAULT_BATCH_SIZE
    catalog.close()
    with pytest.raises(UsageError, match="batch size must be at least 1, not 0"):
        from mbm.collection.checks import check_index_args

        check_index_args([str(tmp_path)], 0)
