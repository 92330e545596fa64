import numpy as np
import pytest

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
