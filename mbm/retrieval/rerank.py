"""Fusion re-ranking: the top-N of a nearest-neighbour search, re-scored by the cross-attention
fusion head (text tokens attending over image tokens) trained beside the encoders.

The candidates' side comes from the tokens stored in the catalog at index time
(``mbm.store.tokens``): re-ranking never opens a candidate's file, so it works after the
files are moved away or deleted. Text -> image: the query text's tokens against each
candidate's image tokens. Image -> text (a text collection): the query picture's tokens
against each candidate's text tokens. Only the top N are re-ordered; none is dropped.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from mbm.config import DEFAULT_COLLECTION
from mbm.errors import CollectionError, UsageError
from mbm.indexer.scan import display_path
from mbm.models.encoder import rerank_logit_scale
from mbm.models.specs import spec_folder
from mbm.retrieval import hubness
from mbm.retrieval.query import QueryLike, Term, as_query
from mbm.retrieval.searcher import Hit, decode_query_image
from mbm.store.catalog import Catalog
from mbm.store.tokens import FUSION_KEY, TokenFormat, tokens_of, unpack_images, unpack_texts

DEFAULT_RERANK_TOP = 50


def calibrated_top(meta: dict[str, str], spec: str | None) -> int:
    """How many candidates a text query over this collection re-ranks by default: DEFAULT_RERANK_TOP when its model
    has a fusion head and a re-ranking calibration (measured to help: the bundled model's MODEL_CARD.md) and the
    collection stores image tokens, else 0. From the catalog's records and the model folder; loads no model."""
    fmt = TokenFormat.of_meta(meta)
    if meta.get(FUSION_KEY) != "1" or fmt is None or fmt.kind != "image" or not spec:
        return 0
    return DEFAULT_RERANK_TOP if hubness.load(spec_folder(spec)) is not None else 0


class MissingTokens(CollectionError):
    """Candidates of a re-ranked search have no stored tokens (indexed before mbm stored them)."""


def rerank_order(
    logits: np.ndarray,
    cosines: np.ndarray,
    logit_scale: float,
    dual_weight: float = 1.0,
    *,
    penalty: np.ndarray | None = None,
    fusion_weight: float = 1.0,
) -> np.ndarray:
    """The re-ranked order (indices into the candidates): ``fusion_weight`` times the fusion logit plus
    ``dual_weight`` times the dual encoder's own logit (``logit_scale * cosine``, less each candidate's hubness
    ``penalty`` when the model has a calibration: ``mbm.retrieval.hubness``), a product of the experts, so a
    fusion head that knows little leaves the dual encoder's order mostly as it was (measured on the bundled
    model: see its MODEL_CARD.md); ties go to the higher cosine, then to the earlier candidate."""
    cosines = np.asarray(cosines, np.float64)
    penalty_logits = None if penalty is None else logit_scale * np.asarray(penalty, np.float64)
    combined = hubness.combined_scores(logits, logit_scale * cosines, fusion_weight, dual_weight, penalty_logits)
    return np.lexsort((np.arange(len(cosines)), -cosines, -combined))


def rerank_term(query: QueryLike, text_collection: bool) -> Term:
    """The one term the fusion head scores against the candidates: the query's only positive text term
    (image collections) or image term (text collections); the other terms only chose the candidates."""
    terms = as_query(query)
    want, other = ("image", "text") if text_collection else ("text", "image")
    positive = [t for t in terms if t.kind == want and t.weight > 0]
    if len(positive) == 1:
        return positive[0]
    if not positive:
        raise UsageError(
            f"--rerank scores one {want} against each {other} of the collection, and query {str(terms)!r} "
            f"has no positive {want} term — add one, or search without --rerank"
        )
    raise UsageError(
        f"--rerank scores one {want} against each candidate, and query {str(terms)!r} has "
        f"{len(positive)} positive {want} terms — keep one of them, or search without --rerank"
    )


class QueryTokens(NamedTuple):
    kind: str  # "text" or "image"
    tokens: np.ndarray  # what the scorer's ``logits`` reads: a text's tokens, or an image's G tokens


class TorchScorer:
    """The fusion head of a loaded model: query tokens from its towers, logits in torch."""

    def __init__(self, encoder: Any):
        self.encoder = encoder
        self.fusion = encoder.require_fusion()
        self.logit_scale = rerank_logit_scale(encoder)
        self.dual_weight = float(getattr(self.fusion.cfg, "dual_weight", 1.0))  # calibrated by training, when it was

    def query_tokens(self, term: Term) -> QueryTokens:
        """The fusion tokens of the query's term (a text, or a picture decoded as the indexer decodes)."""
        if term.kind == "text":
            return QueryTokens("text", self.encoder.encode_text_batch([term.value], tokens=True)[1][0])
        image = decode_query_image(str(term.value), self.encoder.image_size)
        pixels = self.encoder.preprocess(image)[None]
        return QueryTokens("image", self.encoder.encode_image_batch(pixels, tokens=True)[1][0])

    def logits(self, query: QueryTokens, blobs: list[bytes], fmt: TokenFormat) -> np.ndarray:
        """Fusion match logits of the query against each candidate's stored tokens, float64 ``(N,)``."""
        import torch

        one = torch.zeros(len(blobs), dtype=torch.long, device=self.encoder.device)  # every pair shares the query
        q = torch.from_numpy(np.array(query.tokens))[None].to(self.encoder.device)
        with torch.inference_mode():
            if query.kind == "text":
                images = torch.from_numpy(unpack_images(blobs, fmt)).to(self.encoder.device)
                mask = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
                out = self.fusion.match(q, mask, images, text_index=one)
            else:
                tokens, mask = (torch.from_numpy(a).to(self.encoder.device) for a in unpack_texts(blobs, fmt))
                out = self.fusion.match(tokens, mask, q, image_index=one)
        return out.float().cpu().numpy().astype(np.float64)


class OnnxScorer:
    """The fusion head exported beside the collection's text tower (``mbm.models.fusion_onnx``): text queries
    re-rank without torch; the same logits as :class:`TorchScorer` up to float rounding."""

    def __init__(self, text: Any, fusion: Any):
        self.text, self.fusion = text, fusion
        self.logit_scale, self.dual_weight = fusion.logit_scale, fusion.dual_weight

    def query_tokens(self, term: Term) -> QueryTokens:
        if term.kind != "text":
            raise ValueError("the exported fusion head re-ranks text queries only")
        return QueryTokens("text", self.text.encode_tokens(str(term.value))[1])

    def logits(self, query: QueryTokens, blobs: list[bytes], fmt: TokenFormat) -> np.ndarray:
        return self.fusion.logits(query.tokens, unpack_images(blobs, fmt))


class FusionReranker:
    """Re-scores candidates with a model's fusion head (a :class:`TorchScorer` or an :class:`OnnxScorer`) and their
    stored tokens; ``Hit.match`` is its probability, ``Hit.score`` stays the dual encoder's cosine.

    ``spec``: the model's spec, whose checkpoint folder may hold a re-ranking calibration (``mbm.retrieval.hubness``:
    hubness bank and expert weights)."""

    def __init__(self, scorer: TorchScorer | OnnxScorer, spec: str | None, collection: str = DEFAULT_COLLECTION):
        self.scorer = scorer
        self.collection = collection
        self.calibration = hubness.load(spec_folder(spec)) if spec else None

    def query_tokens(self, term: Term) -> QueryTokens:
        return self.scorer.query_tokens(term)

    def rerank(self, query: QueryTokens, hits: list[Hit], catalog: Catalog) -> list[Hit]:
        """The same hits re-ordered, ranks renumbered, ``match`` set (call with the catalog the hits came from)."""
        if not hits:
            return hits
        stored = tokens_of(catalog, [h.id for h in hits])
        fmt = TokenFormat.of_meta(catalog.meta())
        lacking = [h for h in hits if h.id not in stored]
        if lacking or fmt is None:
            raise self._missing(lacking or hits, len(hits), query.kind == "image")
        want = "image" if query.kind == "text" else "text"
        if fmt.kind != want:
            raise CollectionError(
                f"collection {self.collection!r} stores {fmt.kind} tokens, so a {query.kind} query "
                f"cannot be re-ranked against it — query with {'an image' if want == 'text' else 'text'}"
            )
        logits = self.scorer.logits(query, [stored[h.id] for h in hits], fmt)
        fusion_weight, dual_weight = hubness.expert_weights(self.calibration, self.scorer.dual_weight)
        # the bank holds text queries: only pictures (text -> image candidates) have a hubness penalty
        penalty = self.penalties(catalog, hits) if self.calibration is not None and query.kind == "text" else None
        order = rerank_order(
            logits,
            np.array([h.score for h in hits]),
            self.scorer.logit_scale,
            dual_weight,
            penalty=penalty,
            fusion_weight=fusion_weight,
        )
        match = 1.0 / (1.0 + np.exp(-logits))
        return [replace(hits[i], rank=rank, match=round(float(match[i]), 6)) for rank, i in enumerate(order, 1)]

    def penalties(self, catalog: Catalog, hits: list[Hit]) -> np.ndarray:
        """Each candidate's hubness penalty, from its stored vector (0 for one removed meanwhile)."""
        assert self.calibration is not None
        ids, vectors = catalog.embeddings_of([h.id for h in hits])
        found = dict(zip(ids.tolist(), self.calibration.penalty(vectors)))
        return np.array([found.get(h.id, 0.0) for h in hits], np.float64)

    def _missing(self, lacking: list[Hit], total: int, texts: bool) -> MissingTokens:
        places = sorted({h.path if texts else os.path.dirname(h.path) for h in lacking})
        where = places[0] if len(places) == 1 else os.path.commonpath(places)
        where = "PATH" if where in ("", os.sep) else shlex.quote(display_path(where))
        named = "" if self.collection == DEFAULT_COLLECTION else f" -c {shlex.quote(self.collection)}"
        return MissingTokens(
            f"{len(lacking)} of the {total} candidates have no stored re-ranking tokens (they were indexed before "
            f"mbm stored them) — run `mbm index {where} --rerank-tokens{named}` once to add them (the files must "
            "still be there; texts need nothing), then search again"
        )
