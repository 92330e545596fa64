"""mbm: cross-modal (text <-> image) search with open_clip encoders, FAISS and SQLite."""

__version__ = "0.1.0"

from mbm.engine import CollectionInfo, Engine  # noqa: E402
from mbm.errors import MbmError  # noqa: E402
from mbm.indexer.runner import IndexReport  # noqa: E402
from mbm.models.factory import Encoder, ModelInfo, list_models, load_model  # noqa: E402
from mbm.retrieval.query import Query, Term, as_query  # noqa: E402
from mbm.retrieval.searcher import Hit  # noqa: E402

__all__ = [
    "CollectionInfo",
    "Encoder",
    "Engine",
    "Hit",
    "IndexReport",
    "MbmError",
    "ModelInfo",
    "Query",
    "Term",
    "as_query",
    "list_models",
    "load_model",
    "__version__",
]
