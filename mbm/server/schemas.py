"""Request and response bodies (pydantic): what /openapi.json documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class TermIn(BaseModel):
    """One weighted term: exactly one of text, image (base64), embedding, like (an item id)."""

    weight: float = 1.0
    text: str | None = None
    image: str | None = Field(None, description="base64-encoded image file")
    embedding: list[float] | None = None
    like: int | None = Field(None, description="an item id: its stored vector")


class SearchRequest(BaseModel):
    text: str | None = Field(None, description="literal text")
    query: str | None = Field(None, description='mbm\'s query syntax, text terms only: "2:red car - night"')
    image: str | None = Field(
        None, description="base64-encoded image file (image->image, or image->text on a text collection)"
    )
    embedding: list[float] | None = Field(None, description="a raw query vector of the collection's dimension")
    like: int | None = Field(None, description="more like this: the stored vector of this item id")
    terms: list[TermIn] | None = Field(None, description="a weighted sum; negative weights subtract")
    k: int = 10
    offset: int = 0
    min_score: float | Literal["auto"] | None = Field(
        None, description='drop hits below this cosine; "auto": below the query\'s background (see README)'
    )
    under: str | list[str] | None = Field(None, description="only items in this folder or file (a list: any of them)")
    after: str | None = Field(None, description="only items dated at or after this: 2024, 2024-06, 2024-06-15")
    before: str | None = Field(None, description="only items dated before this (same forms)")
    camera: str | None = Field(None, description="only items whose camera name contains this (any case)")
    sort: Literal["score", "date", "path"] = Field(
        "score", description='"date" / "path": every hit above min_score ("auto" unless given) in that order'
    )
    rerank: bool | int | None = Field(
        None,
        description="true: re-rank the top 50 with the fusion head; N: the top N; false: never; "
        "null (default): as `mbm search` does (text queries, with a model whose re-ranking is calibrated)",
    )
    collection: str | None = None
    return_embeddings: bool = False
    tag: str | None = Field(None, description="only items carrying this tag (any case; `mbm tags` lists them)")
    mode: Literal["vector", "keyword", "hybrid"] = Field(
        "vector", description="vector (the model), keyword (BM25 over the items' own text) or hybrid (both, fused)"
    )


class TagOut(BaseModel):
    tag: str
    score: float


class HitOut(BaseModel):
    id: int
    rank: int
    score: float
    path: str
    text: str | None = None
    part: int = 0
    match: float | None = None
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    embedding: list[float] | None = None
    tags: list[TagOut] | None = Field(None, description="the item's tags; null on the micro-batched plain text path")


class SearchResponse(BaseModel):
    collection: str
    generation: int
    catalog_id: str
    offset: int
    k: int
    hits: list[HitOut]
    query_embedding: list[float] | None = None


class ItemOut(BaseModel):
    id: int
    path: str
    part: int = 0
    text: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    camera: str | None = None
    indexed_at: str | None = None
    thumbnail: str | None = None


class CollectionOut(BaseModel):
    name: str
    kind: str
    model: str
    dim: int
    items: int
    generation: int
    ready: bool
    error: str | None = None
    rerank_default: int = Field(0, description="candidates a text query re-ranks when `rerank` is not given (0: none)")


class KnnRequest(BaseModel):
    """clip-retrieval's `clip back` request, field for field."""

    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: Literal["image", "text"] = "image"
    num_images: int = 40
    num_result_ids: int | None = None
    indice_name: str | None = None
    use_mclip: bool = False
    deduplicate: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: Any = None
    aesthetic_weight: Any = None
    verbose: Any = None


class KnnResult(BaseModel):
    id: int
    similarity: float
    url: str | None = None
    caption: str | None = None
    image_path: str | None = None


class ErrorOut(BaseModel):
    error: str
    status: int
