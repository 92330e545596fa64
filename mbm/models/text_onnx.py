"""Torch-free text queries: a text tower exported once to ONNX, then run with ONNX Runtime.

A cold ``mbm search`` would spend seconds importing torch + open_clip to encode one query
in milliseconds. ``export_text_onnx`` (torch, at index time) writes ``model.onnx`` with its
weights in ``model.onnx.data``, ``tower.json`` and, for Hugging Face towers, ``tokenizer.json``;
``OnnxTextEncoder.load`` reads them back with onnxruntime and the torch-free tokenizers of
``mbm.models.text_tokenizers``. The graph also outputs the tower's token features (what the
fusion head reads, as ``mbm.models.tokens.text_tokens`` gives them), so that re-ranking a text
query needs no torch either (``mbm.models.fusion_onnx``). Exported: open_clip ``CLIP`` text towers (causal mask, argmax
pooling, open_clip's default BPE) and ``HFTextEncoder`` towers with a fast tokenizer; anything
else, or an export that does not reproduce the torch vectors, raises ``UnsupportedTextTower``.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbm.models.text_tokenizers import (
    ClipTokenizer,
    clean_hf,
    load_hf_tokenizer,
    same_as_clip_tokenizer,
)

log = logging.getLogger(__name__)

FORMAT, VERSION = "mbm-text-onnx", 2  # 2: the token features as a second output
MODEL_FILE, DATA_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.onnx", "model.onnx.data", "tower.json", "tokenizer.json"
EXPORT_MODULES = ("onnxruntime", "onnx", "onnxscript")  # onnxscript: torch.onnx's dynamo exporter needs it
MIN_COSINE = 0.9999
RECENT_TEXTS = 256  # texts whose embedding and token features stay kept (a few MB)
# what the export checks itself on: short, long (past the context), unicode, markup and empty-ish
PROBE = [
    "red car",
    "",
    " ",
    "A Dog on the BEACH",
    "café &amp; crème brûlée",
    "東京の夜景 🚗",
    "<end_of_text> typed in",
    "word " * 120,
    "Ünïcödé   spaces\t",
    "a very long caption of two people hiking over mountains at sunset " * 4,
]


class UnsupportedTextTower(ValueError):
    """The model's text tower cannot be exported for ``OnnxTextEncoder``."""


def ort_session(path: Path) -> Any:
    """An ONNX Runtime session for a small per-query graph: one thread, mapped weights."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # measured fastest cold (benchmarks/onnx_query_encoder.py): one thread (a query is a few
    # tokens; more threads spin), and no prepacking so the mapped external weights are used in
    # place instead of copied into packed buffers at session creation
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxTextEncoder:
    """An exported text tower run with ONNX Runtime: ``encode_texts`` equals normalized ``model.encode_text``."""

    def __init__(self, config: dict, session: Any, tokenizer: Any):
        self.config, self.session, self.tokenizer = config, session, tokenizer
        self.dim = int(config["output_dim"])
        self._input = session.get_inputs()[0].name
        self._outputs = [o.name for o in session.get_outputs()]
        # encode_tokens' recent texts and answers: a query's search and its re-ranking share one run, and a
        # server's concurrent queries one batched run (encode_tokens_many)
        self._recent: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path) -> OnnxTextEncoder | None:
        """The encoder exported to ``folder``, or None when its files are absent, partial or unusable."""
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            if (config.get("format"), config.get("version")) != (FORMAT, VERSION) or config.get("kind") not in (
                "clip-bpe",
                "hf",
            ):
                return None
            if config["kind"] == "clip-bpe":
                tokenizer: Any = ClipTokenizer(int(config["context_length"]))
            else:
                tokenizer = load_hf_tokenizer(folder / TOKENIZER_FILE, int(config["context_length"]))
            encoder = cls(config, ort_session(folder / MODEL_FILE), tokenizer)
            if encoder.encode_texts([""]).shape != (1, encoder.dim):
                return None
        except Exception as e:  # noqa: BLE001 - missing/partial files or onnxruntime absent: use the full model
            log.debug("no usable ONNX text tower in %s: %s", folder, e)
            return None
        return encoder

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids ``(N, longest)``: CLIP rows cut after the last EOT, HF rows padded with the pad id."""
        if self.config["kind"] == "clip-bpe":
            ids = self.tokenizer(list(texts))
            # causal mask + argmax (EOT) pooling: nothing after the furthest EOT changes any row
            return ids[:, : int(ids.argmax(1).max()) + 1]
        rows = [e.ids for e in self.tokenizer.encode_batch([clean_hf(t) for t in texts])]
        ids = np.full((len(rows), max(map(len, rows))), int(self.config["pad_id"]), np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row  # the graph masks pad ids, as open_clip's HFTextEncoder does
        return ids

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalized float32 ``(N, dim)`` embeddings of ``texts``."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        if len(texts) == 1:  # a query: the same run gives the token features its re-ranking asks for next
            return self.encode_tokens(texts[0])[0][None]
        out = np.empty((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: little padding
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self.session.run(self._outputs[:1], {self._input: self.tokenize([texts[i] for i in idx])})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # as F.normalize

    def encode_tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(embedding (dim,), token features (n, width))`` of one text, float32: the normalized embedding and the
        features of its real tokens, as ``mbm.models.tokens.text_tokens`` computes them (a CLS pooler's token
        dropped). Recent answers are kept (``RECENT_TEXTS``), so a query's search and its re-ranking share one run."""
        return self.encode_tokens_many([text])[0]

    def encode_tokens_many(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`encode_tokens` of each text, the ones not kept computed in one run (padded rows are masked)."""
        with self._lock:
            kept = {t: self._recent[t] for t in texts if t in self._recent}
        todo = list(dict.fromkeys(t for t in texts if t not in kept))
        if todo:
            ids = self.tokenize(todo)
            features, tokens = self.session.run(self._outputs[:2], {self._input: ids})
            real = ids != (0 if self.config["kind"] == "clip-bpe" else int(self.config["pad_id"]))
            if tokens.shape[1] == ids.shape[1] - 1:  # a CLS pooler drops the first token from the sequence
                real = real[:, 1:]
            out = features.astype(np.float32)
            vectors = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # as encode_texts
            for i, text in enumerate(todo):
                kept[text] = (vectors[i].copy(), np.ascontiguousarray(tokens[i][real[i]], np.float32))
            with self._lock:
                for text in todo:
                    self._recent[text] = kept[text]
                    self._recent.move_to_end(text)
                while len(self._recent) > RECENT_TEXTS:
                    self._recent.popitem(last=False)
        return [(kept[t][0].copy(), kept[t][1].copy()) for t in texts]  # copies: a caller may change its arrays


# ---- export (torch; runs where the model is already loaded) ----


def missing_export_modules() -> list[str]:
    """The packages the export needs that are not installed."""
    import importlib.util

    return [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]


def export_text_onnx(encoder: Any, folder: str | Path) -> None:
    """Write ``encoder``'s text tower to ``folder`` and check it against torch; ``UnsupportedTextTower`` otherwise."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tower, config, example = _tower(encoder, folder)
    positions = int(config.pop("num_positions"))
    dims = ({0: torch.export.Dim("batch", max=4096), 1: torch.export.Dim("tokens", min=2, max=positions)},)
    try:
        with torch.inference_mode(), warnings.catch_warnings(), _quiet(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                tower,
                (example,),
                None,
                input_names=["ids"],
                output_names=["text_features", "text_tokens"],
                dynamic_shapes=dims,
                dynamo=True,
                verbose=False,
            )
            if program is None:  # only when an output file is given, which this call does not
                raise UnsupportedTextTower("torch.onnx.export returned no program")
            program.save(str(folder / MODEL_FILE), external_data=True)  # weights -> model.onnx.data, mapped on load
    except Exception as e:
        raise UnsupportedTextTower(
            f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    (folder / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION, **config}, indent=1))
    onnx_encoder = OnnxTextEncoder.load(folder)
    if onnx_encoder is None:
        raise UnsupportedTextTower("the ONNX export does not load in onnxruntime")
    cosine = float((onnx_encoder.encode_texts(PROBE) * encoder.encode_texts(PROBE)).sum(1).min())
    if cosine < MIN_COSINE:  # a subclass forward or tokenizer the export does not reproduce
        raise UnsupportedTextTower(f"the ONNX export agrees with the model only to cosine {cosine:.6f}")
    cosine = _token_cosine(onnx_encoder, encoder, PROBE[:4])
    if cosine < MIN_COSINE:
        raise UnsupportedTextTower(
            f"the ONNX export's token features agree with the model's only to cosine {cosine:.6f}"
        )


def _token_cosine(onnx_encoder: OnnxTextEncoder, encoder: Any, texts: Sequence[str]) -> float:
    """The lowest cosine between the export's token features and ``text_tokens``' real ones (-1: other tokens)."""
    import torch

    from mbm.models.tokens import text_tokens

    low = 1.0
    for text in texts:
        _, ours = onnx_encoder.encode_tokens(text)
        with torch.inference_mode():
            _, cells, mask = text_tokens(encoder.model, encoder.tokenizer([text]).to(encoder.device))
        theirs = cells[0][mask[0]].float().cpu().numpy()
        if ours.shape != theirs.shape:
            return -1.0
        norms = np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
        low = min(low, float(((ours * theirs).sum(1) / np.maximum(norms, 1e-12)).min()))
    return low


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines and per-pass INFO logs are noise in ``mbm index --verbose``."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _tower(encoder: Any, folder: Path) -> tuple[Any, dict, Any]:
    """A float32 CPU copy of the text tower as an ``ids -> (features, token features)`` module, its config and
    example ids."""
    import torch

    model, tokenizer = encoder.model, encoder.tokenizer
    length = int(getattr(tokenizer, "context_length", 0) or 77)
    text: Any = getattr(model, "text", None)
    config: dict[str, Any]
    if type(text).__name__ == "HFTextEncoder":
        backend = getattr(getattr(tokenizer, "tokenizer", None), "backend_tokenizer", None)
        if backend is None or getattr(text, "output_tokens", False):
            raise UnsupportedTextTower(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend")
        (folder / TOKENIZER_FILE).write_text(backend.to_str())
        hf = text.config
        config = {
            "kind": "hf",
            "context_length": length,
            "pad_id": int(hf.pad_token_id or 0),
            "num_positions": int(hf.max_position_embeddings),
            "output_dim": int(encoder.dim),
        }
        tower = _hf_text(text)
    else:
        tower = _clip_text(model)
        if not same_as_clip_tokenizer(tokenizer, length):
            raise UnsupportedTextTower(
                f"tokenizer {type(tokenizer).__name__} does not tokenize like open_clip's default CLIP BPE"
            )
        config = {
            "kind": "clip-bpe",
            "context_length": length,
            "num_positions": int(model.positional_embedding.shape[0]),
            "output_dim": int(encoder.dim),
        }
    if not 2 <= length <= int(config["num_positions"]):
        raise UnsupportedTextTower(
            f"tokenizer context_length {length} does not fit the model's {config['num_positions']} positions"
        )
    # batch 2, not 1: torch.export specializes a size-1 axis instead of keeping it symbolic
    example = torch.tensor(
        [[101, 1037, 2417, 2482, 102]] * 2 if config["kind"] == "hf" else [[49406, 320, 736, 1615, 49407]] * 2
    )
    return tower.to("cpu", torch.float32).eval(), config, example


def _hf_text(text: Any) -> Any:
    """A copy of an open_clip ``HFTextEncoder`` that returns ``(projected, token features)``."""
    import copy

    import torch

    class HFText(torch.nn.Module):
        def __init__(self, tower: Any):
            super().__init__()
            self.tower = copy.deepcopy(tower)
            self.tower.output_tokens = True  # forward returns the tokens beside the pooled, projected vector

        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            projected, tokens = self.tower(ids)
            return projected, tokens

    return HFText(text)


def _clip_text(model: Any) -> Any:
    """Only the text parts of an open_clip ``CLIP``, copied: the visual tower stays where it is."""
    import copy

    import torch
    from open_clip.model import CLIP

    # the exact method, not isinstance alone: a subclass may override the forward reproduced here
    if not isinstance(model, CLIP) or type(model).encode_text is not CLIP.encode_text:
        inner = type(getattr(model, "text", model)).__name__
        raise UnsupportedTextTower(
            f"text tower {inner} of {type(model).__name__} is neither open_clip's CLIP text tower nor HFTextEncoder"
        )
    if model.text_pool_type != "argmax":
        raise UnsupportedTextTower(f"text pool_type {model.text_pool_type!r} is not supported (only argmax)")
    n = model.positional_embedding.shape[0]
    causal = torch.full((n, n), float("-inf")).triu(1)
    if (
        model.attn_mask is None
        or model.attn_mask.shape != causal.shape
        or not torch.equal(model.attn_mask.detach().float().cpu(), causal)
    ):
        raise UnsupportedTextTower("only causal text towers are supported (no_causal_mask or another mask found)")

    class ClipText(torch.nn.Module):
        """open_clip ``CLIP.encode_text`` over any length up to the context (causal: later positions change nothing)."""

        attn_mask: torch.Tensor

        def __init__(self, clip: Any):
            super().__init__()
            self.token_embedding, self.transformer = (
                copy.deepcopy(clip.token_embedding),
                copy.deepcopy(clip.transformer),
            )
            self.ln_final = copy.deepcopy(clip.ln_final)
            self.positional_embedding = torch.nn.Parameter(clip.positional_embedding.detach().clone())
            self.register_buffer("attn_mask", clip.attn_mask.detach().clone(), persistent=False)
            proj = clip.text_projection
            self.text_projection = (
                copy.deepcopy(proj)
                if isinstance(proj, torch.nn.Module)
                else (None if proj is None else torch.nn.Parameter(proj.detach().clone()))
            )

        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = ids.shape[1]
            x = self.token_embedding(ids) + self.positional_embedding[:n]
            tokens = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
            x = tokens[torch.arange(tokens.shape[0]), ids.argmax(-1)]
            if self.text_projection is None:
                return x, tokens
            if isinstance(self.text_projection, torch.nn.Module):
                return self.text_projection(x), tokens
            return x @ self.text_projection, tokens

    return ClipText(model)
