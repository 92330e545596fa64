import numpy as np
import pytest
from conftest import make_images, pattern_image

from mbm.errors import UsageError
from mbm.retrieval.query import Term, combine, parse_query


def test_plain_text_is_one_term():
    assert parse_query("red car") == [Term(1.0, "text", "red car")]


def test_weights_signs_and_hyphenated_words():
    terms = parse_query("2:red car + t-shirt - 0.5:night")
    assert terms == [Term(2.0, "text", "red car"), Term(1.0, "text", "t-shirt"), Term(-0.5, "text", "night")]


def test_existing_image_path_becomes_image_term(tmp_path):
    from PIL import Image

    p = tmp_path / "beach.jpg"
    Image.new("RGB", (8, 8)).save(p)
    terms = parse_query(f"sunset + {p}")
    assert terms[1] == Term(1.0, "image", str(p))


def test_missing_image_path_is_a_usage_error():
    with pytest.raises(UsageError, match="does not exist"):
        parse_query("./no/such/beach.jpg")


@pytest.mark.parametrize("bad", ["", "   ", "- night"])
def test_empty_or_only_negative_queries_are_rejected(bad):
    with pytest.raises(UsageError):
        parse_query(bad)


def test_combine_is_normalized_weighted_sum():
    rng = np.random.default_rng(0)
    table = {w: rng.normal(size=8).astype(np.float32) for w in ("a", "b", "c")}
    enc = lambda xs: np.stack([table[x] for x in xs])  # noqa: E731 - unnormalized on purpose
    got = combine(parse_query("2:a + b - 0.5:c"), enc, enc)
    unit = {k: v / np.linalg.norm(v) for k, v in table.items()}
    want = 2 * unit["a"] + unit["b"] - 0.5 * unit["c"]
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-5)
    assert abs(np.linalg.norm(got) - 1) < 1e-5


def test_cancelling_terms_are_reported():
    enc = lambda xs: np.ones((len(xs), 4), np.float32)  # noqa: E731
    with pytest.raises(UsageError, match="cancel"):
        combine(parse_query("a - b"), enc, enc)


# -- the weight rule, quoting, and image paths given apart -----------------------------------
@pytest.mark.parametrize("text", ["3:10 to Yuma", "10:30 meeting", "re:invent", "1:1 scale", "2:.5 ratio", "2:"])
def test_colons_in_times_ratios_and_words_stay_text(text):
    assert parse_query(text) == [Term(1.0, "text", text)]


@pytest.mark.parametrize(
    "text,weight,value",
    [("2:red car", 2.0, "red car"), ("0.5: beach", 0.5, "beach"), (".5:dog", 0.5, "dog"), ("3:#tag", 3.0, "#tag")],
)
def test_weight_prefix_before_anything_but_a_digit(text, weight, value):
    assert parse_query(text) == [Term(weight, "text", value)]


def test_weighted_sum_is_parsed_once():
    from mbm.retrieval.query import Query

    assert list(Query.parse("2:red car + dog")) == [Term(2.0, "text", "red car"), Term(1.0, "text", "dog")]


def test_quoted_terms_are_literal_text():
    assert parse_query('"3:10 - the remake" + 2:"a + b" - "./x.jpg"') == [
        Term(1.0, "text", "3:10 - the remake"),
        Term(2.0, "text", "a + b"),
        Term(-1.0, "text", "./x.jpg"),
    ]
    # quotes that do not enclose a whole term are part of the text
    assert parse_query('"The Office" season 3') == [Term(1.0, "text", '"The Office" season 3')]
    assert parse_query('12" vinyl') == [Term(1.0, "text", '12" vinyl')]


def test_doubled_sign_is_an_empty_term():
    with pytest.raises(UsageError, match="empty term"):
        parse_query("a + - b")


def test_weighted_image_term(tmp_path):
    p = tmp_path / "beach.png"
    pattern_image(0).save(p)
    assert parse_query(f"night + 2:{p}") == [Term(1.0, "text", "night"), Term(2.0, "image", str(p))]


def test_image_paths_given_apart_are_never_parsed(tmp_path):
    from mbm.retrieval.query import Query

    p = tmp_path / "Vacation - Day 1.jpg"
    pattern_image(0).save(p, "JPEG")
    assert list(Query.parse(None, images=[p])) == [Term(1.0, "image", str(p))]
    assert list(Query.parse("3:10 to Yuma", images=[str(p)])) == [
        Term(1.0, "text", "3:10 to Yuma"),
        Term(1.0, "image", str(p)),
    ]


def test_missing_image_given_apart_names_the_path(tmp_path):
    from mbm.retrieval.query import Query

    with pytest.raises(UsageError, match=r"query image .*Day 2\.jpg does not exist"):
        Query.parse("sunset", images=[tmp_path / "Vacation - Day 2.jpg"])


@pytest.mark.parametrize("bad", [None, "", "  "])
def test_nothing_to_parse_is_an_error(bad):
    from mbm.retrieval.query import Query

    with pytest.raises(UsageError, match="empty"):
        Query.parse(bad)


# -- the library's structured queries ---------------------------------------------------------
def test_library_strings_are_literal_text(tmp_path):
    from mbm.retrieval.query import as_query

    assert list(as_query("2:red car + dog")) == [Term(1.0, "text", "2:red car + dog")]
    p = tmp_path / "a.png"
    pattern_image(0).save(p)
    assert list(as_query(str(p))) == [Term(1.0, "text", str(p))]  # a str is text; a Path is an image
    assert list(as_query(p)) == [Term(1.0, "image", str(p))]


def test_as_query_takes_vectors_terms_and_pairs(tmp_path):
    from mbm.retrieval.query import Query, as_query

    v = np.arange(1, 5, dtype=np.float64)
    q = as_query(v)
    assert q[0].kind == "vector" and q[0].value.dtype == np.float32 and not q[0].value.flags.writeable
    v[0] = 99  # the query keeps its own copy
    assert q[0].value[0] == 1
    p = tmp_path / "a.png"
    pattern_image(0).save(p)
    mixed = as_query([(2, "red car"), (-0.5, p), Term(1.0, "vector", np.ones(4))])
    assert [(t.weight, t.kind) for t in mixed] == [(2.0, "text"), (-0.5, "image"), (1.0, "vector")]
    assert as_query(mixed) is mixed and Query.terms(list(mixed)) == mixed
    with pytest.raises(UsageError, match="neither a Term nor a"):
        as_query(["red car"])
    with pytest.raises(UsageError, match="cannot search with a int"):
        as_query(3)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.array([1.0, np.nan, 0.0]), "NaN or infinite"),
        (np.array([np.inf, 1.0]), "NaN or infinite"),
        (np.zeros(4), "all zeros"),
        (np.ones((2, 4)), "shape"),
        (np.array(["a", "b"]), "not numeric"),
    ],
)
def test_bad_vectors_are_usage_errors(bad, message):
    from mbm.retrieval.query import Query

    with pytest.raises(UsageError, match=message):
        Query.vector(bad)


def test_only_negative_terms_are_rejected_in_every_form():
    from mbm.retrieval.query import Query

    with pytest.raises(UsageError, match="only negative"):
        Query.terms([(-1, "night"), (-2, np.ones(3))])
    with pytest.raises(UsageError, match="only negative"):
        Query.text("night", weight=-1)


def test_combine_handles_vector_terms():
    from mbm.retrieval.query import Query

    rng = np.random.default_rng(1)
    a, raw = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    enc = lambda xs: np.stack([a for _ in xs])  # noqa: E731
    got = combine(Query.terms([(1, "a"), (-0.5, raw)]), enc, enc)
    want = a / np.linalg.norm(a) - 0.5 * raw / np.linalg.norm(raw)
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-5)
    with pytest.raises(UsageError, match="6 and 7 dimensions"):
        combine(Query.terms([(1, "a"), (1, np.ones(7))]), enc, enc)


# -- through the Engine -------------------------------------------------------------------------
def test_engine_searches_with_a_path_a_vector_and_a_query(tmp_path, engine_factory):
    from mbm.retrieval.query import Query

    paths = make_images(tmp_path / "p", 5)
    eng = engine_factory()
    eng.index([tmp_path / "p"])
    by_path = eng.search(paths[2], k=2)
    assert by_path[0].path == str(paths[2]) and by_path[0].score == pytest.approx(1.0, abs=1e-3)
    ids, vecs = next(eng.catalog().read_embeddings())
    target = int(ids[3])
    by_vector = eng.search(np.asarray(vecs[3], np.float64) * 7.0, k=2)  # any scale: it is normalized
    assert by_vector[0].id == target and by_vector[0].score == pytest.approx(1.0, abs=1e-3)
    mixed = eng.search(Query.terms([(1, paths[2]), (0.1, "a red car")]), k=1)
    assert mixed[0].path == str(paths[2])
    with pytest.raises(
        UsageError, match=rf"has {vecs.shape[1] + 1} dimensions but this collection's vectors have {vecs.shape[1]}"
    ):
        eng.search(np.ones(vecs.shape[1] + 1), k=1)
