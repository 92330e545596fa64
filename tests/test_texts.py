"""Untrusted text sources: a malformed file is skipped with its reason, never the run."""

import json
import os
import threading

import pytest

from mbm.indexer.texts import MAX_TEXT_CHARS, MAX_TEXT_FILE_BYTES, read_texts


def _index(engine_factory, *paths):
    return engine_factory("texts").index(list(paths))


def _reasons(report):
    return {os.path.basename(p): r for p, r in report.skipped}


def test_csv_field_over_the_csv_limit_skips_only_that_file(tmp_path, engine_factory):
    (tmp_path / "bomb.csv").write_text("text\n" + "x" * 200_000 + "\n")
    (tmp_path / "good.txt").write_text("a red car\n")
    report = _index(engine_factory, tmp_path / "bomb.csv", tmp_path / "good.txt")
    assert report.indexed == 1
    reason = _reasons(report)["bomb.csv"]
    assert "line 2 is not valid CSV" in reason and "field larger than field limit" in reason


def test_deeply_nested_json_skips_only_that_file(tmp_path, engine_factory):
    (tmp_path / "deep.jsonl").write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "good.txt").write_text("a red car\n")
    report = _index(engine_factory, tmp_path / "deep.jsonl", tmp_path / "good.txt")
    assert report.indexed == 1
    assert "line 2 is JSON nested too deeply" in _reasons(report)["deep.jsonl"]


def test_latin1_file_is_skipped_naming_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"plain ascii line number something\n" * 299 + "caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 300 is not UTF-8 \(byte 4 of the line\) — save the file as UTF-8"):
        read_texts(str(path))


def test_utf8_bom_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhello,1\n")
    assert read_texts(str(path)) == [(2, "hello")]


def test_control_characters_huge_tokens_and_lone_surrogates(tmp_path, engine_factory):
    (tmp_path / "odd.txt").write_text("a\x00b\x07c\x1b[31m\n" + "x" * 1_000_000 + "\n", newline="")
    (tmp_path / "odd.jsonl").write_text(json.dumps({"text": "half \ud800 pair"}) + "\n")
    report = _index(engine_factory, tmp_path / "odd.txt", tmp_path / "odd.jsonl")
    assert report.ok and report.indexed == 3
    texts = sorted(read_texts(str(tmp_path / "odd.txt")) + read_texts(str(tmp_path / "odd.jsonl")))
    assert texts == [(1, "a b c [31m"), (1, "half ? pair"), (2, "x" * MAX_TEXT_CHARS)]


def test_empty_text_file_is_unchanged_on_the_next_run(tmp_path, engine_factory):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    (tmp_path / "good.txt").write_text("a red car\n")
    eng = engine_factory("texts")
    first = eng.index([tmp_path], texts=True)
    assert first.ok and first.indexed == 1
    generation = eng.catalog().generation()
    again = eng.index([tmp_path], texts=True)
    assert (again.unchanged, again.indexed, again.removed) == (3, 0, 0) and again.ok
    assert eng.catalog().generation() == generation


def test_file_that_empties_loses_its_old_texts(tmp_path, engine_factory):
    path = tmp_path / "notes.txt"
    path.write_text("one\ntwo\n")
    eng = engine_factory("texts")
    eng.index([path])
    path.write_text("")
    os.utime(path, ns=(1, 10**18))
    report = eng.index([path])
    assert report.ok and report.total_items == 0
    assert eng.index([path]).unchanged == 1


def test_text_file_over_the_cap_is_skipped_from_its_scan_size(tmp_path, engine_factory):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(MAX_TEXT_FILE_BYTES + 1)  # sparse: no disk used, never read
    (tmp_path / "good.txt").write_text("a red car\n")
    report = _index(engine_factory, huge, tmp_path / "good.txt")
    assert report.indexed == 1
    assert "over the 256 MiB limit for a text source — split it into smaller files" in _reasons(report)["huge.txt"]


def test_fifo_text_source_does_not_hang(tmp_path):
    path = tmp_path / "captions.txt"
    os.mkfifo(path)
    errors = []

    def read():
        try:
            read_texts(str(path))
        except ValueError as e:
            errors.append(str(e))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert errors and "not a regular file" in errors[0]
