"""Torch-free text tokenizers for the query path, id for id equal to open_clip's.

``ClipTokenizer`` reproduces open_clip's default ``SimpleTokenizer`` (CLIP byte-level BPE);
``load_hf_tokenizer`` + ``clean_hf`` reproduce its ``HFTokenizer`` for fast (``tokenizers``)
Hugging Face tokenizers. Neither imports torch, open_clip or transformers.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import regex  # open_clip's own dependency; \p{L} needs it; imports in ~20 ms

log = logging.getLogger(__name__)

_SPECIALS = ("<start_of_text>", "<end_of_text>")
_N_MERGES = 49152 - 256 - 2  # the merges open_clip reads from the vocab file
# exactly open_clip's pattern and flags: special tokens typed in a query map to their ids there too
_PATTERN = regex.compile(
    "|".join(_SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
# ftfy.fix_text leaves printable ASCII without '&' unchanged (fuzzed: 200k strings), so plain
# queries skip its ~100 ms import; '&' is unescaped repeatedly by ftfy, control chars removed
_PLAIN = regex.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


@lru_cache(maxsize=1)
def _ftfy_fix() -> Any:
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is an open_clip dependency
        log.warning("ftfy is not installed: non-ASCII queries may tokenize differently from open_clip")
        return lambda s: s
    return ftfy.fix_text


def _fix_and_unescape(text: str) -> str:
    if not _PLAIN.fullmatch(text):
        text = _ftfy_fix()(text)
    return html.unescape(html.unescape(text))


def clean_clip(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML unescape twice, collapse whitespace, lowercase."""
    return " ".join(_fix_and_unescape(text).split()).lower()


def clean_hf(text: str) -> str:
    """open_clip's HFTokenizer 'whitespace' cleaning: ftfy, HTML unescape twice, collapse whitespace."""
    return " ".join(_fix_and_unescape(text).strip().split())


def default_bpe_path() -> Path:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz``, found without importing open_clip (or torch)."""
    spec = importlib.util.find_spec("open_clip")  # a top-level find_spec does not execute the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed: its BPE vocabulary is needed")
    return Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=4)
def _load_vocab(path: str) -> tuple[dict[int, str], dict[str, int], dict[tuple[str, str], int]]:
    # GPT-2 byte alphabet: printable bytes stand for themselves, the rest get chars from U+0100 on;
    # the vocabulary lists the printable ones first, in this order
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    order = keep + [b for b in range(256) if b not in keep]
    chars = [chr(b) for b in keep] + [chr(256 + i) for i in range(256 - len(keep))]
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    merges = [(a, b) for a, b in (line.split() for line in lines)]  # each merge line is one pair
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + list(_SPECIALS)
    return dict(zip(order, chars)), {t: i for i, t in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}


class ClipTokenizer:
    """CLIP byte-level BPE, id for id equal to open_clip's default ``SimpleTokenizer``."""

    def __init__(self, context_length: int = 77, bpe_path: str | Path | None = None):
        self.context_length = context_length
        self._byte_char, self._ids, self._ranks = _load_vocab(str(bpe_path or default_bpe_path()))
        self.sot_id, self.eot_id = self._ids[_SPECIALS[0]], self._ids[_SPECIALS[1]]
        self._cache: dict[str, list[str]] = {s: [s] for s in _SPECIALS}

    clean = staticmethod(clean_clip)

    def _bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token]
        parts = [*token[:-1], token[-1] + "</w>"]
        while len(parts) > 1:
            # merge the best-ranked adjacent pair, every occurrence left to right, until none is known
            best = min(itertools.pairwise(parts), key=lambda p: self._ranks.get(p, _N_MERGES))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) > 100_000:  # a long-running server sees unbounded distinct words
            self._cache = {s: [s] for s in _SPECIALS}
        self._cache[token] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens or truncation."""
        ids: list[int] = []
        for piece in _PATTERN.findall(self.clean(text)):
            token = "".join(self._byte_char[b] for b in piece.encode("utf-8"))
            ids.extend(self._ids[t] for t in self._bpe(token))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """``(N, context_length)`` int64 ids: SOT, tokens, EOT, zero padding; too long keeps EOT last."""
        texts = [texts] if isinstance(texts, str) else texts
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), np.int64)
        for row, text in zip(out, texts):
            ids = [self.sot_id, *self.encode(text)][: n - 1] + [self.eot_id]
            row[: len(ids)] = ids
        return out


def same_as_clip_tokenizer(tokenizer: Any, context_length: int) -> bool:
    """Whether open_clip's ``tokenizer`` object gives ``ClipTokenizer``'s ids (checked by behaviour)."""
    probe = ["A red car!", "café &amp; 🚗 <end_of_text>", "Ünïcödé   spaces\t", "x " * 100]
    try:
        return bool(
            np.array_equal(
                np.asarray(tokenizer(probe, context_length=context_length)), ClipTokenizer(context_length)(probe)
            )
        )
    except Exception:  # noqa: BLE001 - any failure means "not the default CLIP BPE"
        return False


def load_hf_tokenizer(path: str | Path, context_length: int) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` that truncates like open_clip's HFTokenizer and never pads."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=int(context_length))
    tokenizer.no_padding()
    return tokenizer
