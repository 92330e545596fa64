"""Request and response bodies (pydantic): what /openapi.json documents."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field


class TermIn(BaseModel):
    """One weighted term: exactly one of text, image (base64), embedding, like (an item id)."""

    weight: float = 1.0
    text: Optional[str] = None
    image: Optional[str] = Field(None, description="base64-encoded image file")
    embedding: Optional[list[float]] = None
    like: Optional[int] = Field(None, description="an item id: its stored vector")


class SearchRequest(BaseModel):
    text: Optional[str] = Field(None, description="literal text")
    query: Optional[str] = Field(None, description='mbm\'s query syntax, text terms only: "2:red car - night"')
    image: Optional[str] = Field(None, description="base64-encoded image file (image->image, or image->text on a text collection)")
    embedding: Optional[list[float]] = Field(None, description="a raw query vector of the collection's dimension")
    like: Optional[int] = Field(None, description="more like this: the stored vector of this item id")
    terms: Optional[list[TermIn]] = Field(None, description="a weighted sum; negative weights subtract")
    k: int = 10
    offset: int = 0
    min_score: Optional[float] = None
    under: Optional[str] = Field(None, description="only items whose path starts with this folder")
    rerank: Union[bool, int] = Field(False, description="true: re-rank the top 50 with the fusion head; N: the top N")
    collection: Optional[str] = None
    return_embeddings: bool = False


class HitOut(BaseModel):
    id: int
    rank: int
    score: float
    path: str
    text: Optional[str] = None
    part: int = 0
    match: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    taken_at: Optional[str] = None
    embedding: Optional[list[float]] = None


class SearchResponse(BaseModel):
    collection: str
    generation: int
    catalog_id: str
    offset: int
    k: int
    hits: list[HitOut]
    query_embedding: Optional[list[float]] = None


class ItemOut(BaseModel):
    id: int
    path: str
    part: int = 0
    text: Optional[str] = None
    size: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    taken_at: Optional[str] = None
    camera: Optional[str] = None
    indexed_at: Optional[str] = None
    thumbnail: Optional[str] = None


class CollectionOut(BaseModel):
    name: str
    kind: str
    model: str
    dim: int
    items: int
    generation: int
    ready: bool
    error: Optional[str] = None


class KnnRequest(BaseModel):
    """clip-retrieval's `clip back` request, field for field."""

    text: Optional[str] = None
    image: Optional[str] = None
    image_url: Optional[str] = None
    embedding_input: Optional[list[float]] = None
    modality: Literal["image", "text"] = "image"
    num_images: int = 40
    num_result_ids: Optional[int] = None
    indice_name: Optional[str] = None
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
    url: Optional[str] = None
    caption: Optional[str] = None
    image_path: Optional[str] = None


class ErrorOut(BaseModel):
    error: str
    status: int
