"""Torch-free text queries for open_clip Hugging Face text towers of the BERT family.

The bundled offline model's text tower is all-MiniLM-L6-v2 (a 6-layer BERT) behind
open_clip's ``HFTextEncoder`` (mean pooling, MLP projection). Encoding one query with it
through torch + transformers costs ~4 s of imports on a small machine; this module runs
the same forward with numpy and the ``tokenizers`` library (a Rust extension that loads
in milliseconds): ``export_bert_tower`` writes ``text_tower.safetensors`` +
``text_tower.json`` + ``tokenizer.json``; ``NumpyBertEncoder.load`` reads them back.

Supported: BERT with absolute positions and exact GELU, mean or first-token pooling,
no / linear / MLP projection (open_clip's ``hf_proj_type``). Anything else raises
``UnsupportedTextTower`` and queries use the full model.
"""

from __future__ import annotations

import html
import json
import logging
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from mbm.atomic import write_with
from mbm.models.text_numpy import (
    _PLAIN,
    CONFIG_FILE,
    FP32_MAX_PARAMS,
    WEIGHTS_FILE,
    UnsupportedTextTower,
    _blas_threads,
    _ftfy_fix,
    _gelu,
    _layer_norm,
    _linear,
)

log = logging.getLogger(__name__)

FORMAT, VERSION = "mbm-text-numpy-bert", 1
TOKENIZER_FILE = "tokenizer.json"
_POOLERS = {"MeanPooler": "mean", "ClsPooler": "first", "ClsLastHiddenStatePooler": "first"}


def clean(text: str) -> str:
    """open_clip's HFTokenizer 'whitespace' cleaning: ftfy, HTML unescape twice, collapse whitespace."""
    if not _PLAIN.fullmatch(text):
        text = _ftfy_fix()(text)
    return " ".join(html.unescape(html.unescape(text)).strip().split())


class NumpyBertEncoder:
    """An exported BERT text tower run with numpy: ``encode_texts`` equals normalized ``model.encode_text``."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray], tokenizer: Any):
        self.config, self.tokenizer = config, tokenizer
        self.dim = int(config["output_dim"])
        self._w = {k: v if k == "word_embeddings" else v.astype(np.float32, copy=False) for k, v in weights.items()}

    @classmethod
    def load(cls, folder: str | Path) -> NumpyBertEncoder | None:
        """The encoder exported to ``folder``, or None when the files are absent, partial or mismatched."""
        folder = Path(folder)
        try:
            from tokenizers import Tokenizer

            config = json.loads((folder / CONFIG_FILE).read_text())
            if (config.get("format"), config.get("version")) != (FORMAT, VERSION):
                return None
            with safe_open(str(folder / WEIGHTS_FILE), framework="numpy") as f:
                if (f.metadata() or {}).get("export_id") != config["export_id"]:  # files from two exports
                    return None
                weights = {k: f.get_tensor(k) for k in f.keys()}
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
            tokenizer.enable_truncation(max_length=int(config["context_length"]))
            tokenizer.no_padding()
            encoder = cls(config, weights, tokenizer)
            if encoder.encode_texts([""]).shape != (1, encoder.dim):  # every weight there, with its shape
                return None
        except Exception as e:  # noqa: BLE001 - missing/partial/mismatched files or tokenizers absent: use the full model
            log.debug("no usable numpy BERT text tower in %s: %s", folder, e)
            return None
        return encoder

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids ``(N, longest)`` padded with the pad id (a pad-masked BERT ignores the padding length)."""
        rows = [e.ids for e in self.tokenizer.encode_batch([clean(t) for t in texts])]
        ids = np.full((len(rows), max(map(len, rows))), self.config["pad_id"], np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalized float32 ``(N, dim)`` embeddings of ``texts``."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        out = np.empty((len(texts), self.dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: little padding
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            ids = self.tokenize([texts[i] for i in idx])
            small = ids.size <= 512 and _blas_threads() is not None  # one query: one BLAS thread (see text_numpy)
            if small:
                with _blas_threads().limit(limits=1, user_api="blas"):
                    out[idx] = self._forward(ids)
            else:
                out[idx] = self._forward(ids)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        c, w = self.config, self._w
        eps, heads = c["ln_eps"], c["heads"]
        mask = ids != c["pad_id"]  # open_clip: attention_mask = (ids != pad_token_id)
        x = w["word_embeddings"][ids].astype(np.float32) + w["position_embeddings"][: ids.shape[1]] + w["token_type_embedding"]
        x = _layer_norm(x, w["embeddings.ln.weight"], w["embeddings.ln.bias"], eps)
        bias = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        for i in range(c["layers"]):
            p = f"layer.{i}."
            h = self._attention(x, w, p, bias, heads)
            x = _layer_norm(x + h, w[p + "attn_ln.weight"], w[p + "attn_ln.bias"], eps)
            h = _linear(_gelu(_linear(x, w[p + "fc_in.weight"], w[p + "fc_in.bias"])), w[p + "fc_out.weight"], w[p + "fc_out.bias"])
            x = _layer_norm(x + h, w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"], eps)
        if c["pool"] == "mean":
            m = mask[..., None].astype(np.float32)
            pooled = (x * m).sum(1) / m.sum(1)
        else:
            pooled = x[:, 0]
        if c["projection"] == "linear":
            pooled = pooled @ w["proj.0"].T
        elif c["projection"] == "mlp":
            pooled = _gelu(pooled @ w["proj.0"].T) @ w["proj.2"].T
        return pooled.astype(np.float32)

    @staticmethod
    def _attention(x: np.ndarray, w: dict, p: str, bias: np.ndarray, heads: int) -> np.ndarray:
        b, n, d = x.shape
        q, k, v = (_linear(x, w[p + name + ".weight"], w[p + name + ".bias"]).reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3)
                   for name in ("query", "key", "value"))
        s = (q * np.float32((d // heads) ** -0.5)) @ k.transpose(0, 1, 3, 2) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        h = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        return _linear(h, w[p + "attn_out.weight"], w[p + "attn_out.bias"])


_LAYER_NAMES = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_ln",
    "intermediate.dense": "fc_in", "output.dense": "fc_out", "output.LayerNorm": "mlp_ln",
}


def export_bert_tower(model: Any, tokenizer: Any, folder: str | Path, *, dtype: str = "auto") -> None:
    """Write ``model``'s HF BERT text tower + projection + tokenizer to ``folder``; ``UnsupportedTextTower`` otherwise."""
    import torch

    config, tensors = _describe(model)
    backend = getattr(getattr(tokenizer, "tokenizer", None), "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTextTower(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend")
    config["context_length"] = int(getattr(tokenizer, "context_length", 0) or config["num_positions"])
    params = sum(t.numel() for t in tensors.values())
    dtype = ("float32" if params < FP32_MAX_PARAMS else "float16") if dtype == "auto" else dtype
    arrays = {}
    for name, t in tensors.items():
        a = t.detach().to("cpu", torch.float32).numpy()
        half = dtype == "float16" and a.ndim == 2 and np.abs(a).max(initial=0) < 65504  # matrices only, as text_numpy
        arrays[name] = np.ascontiguousarray(a.astype(np.float16) if half else a)
    config.update(format=FORMAT, version=VERSION, export_id=uuid.uuid4().hex, dtype=dtype, params=int(params))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_with(folder / TOKENIZER_FILE, lambda p: Path(p).write_text(backend.to_str()))
    write_with(folder / WEIGHTS_FILE, lambda p: Path(p).write_bytes(save(arrays, metadata={"export_id": config["export_id"]})))
    write_with(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=1)))


def _describe(model: Any) -> tuple[dict, dict]:
    from torch import nn

    text = getattr(model, "text", None)
    bert = getattr(text, "transformer", None)
    hf = getattr(bert, "config", None)
    if hf is None or getattr(hf, "model_type", None) != "bert":
        raise UnsupportedTextTower("the text tower is not a Hugging Face BERT")
    if hf.hidden_act != "gelu" or getattr(hf, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedTextTower(f"BERT with {hf.hidden_act} / {hf.position_embedding_type} positions is not supported")
    pool = _POOLERS.get(type(text.pooler).__name__)
    if pool is None or getattr(text.pooler, "cls_token_position", 0) != 0:
        raise UnsupportedTextTower(f"text pooler {type(text.pooler).__name__} is not supported")
    proj, tensors = text.proj, {}
    if isinstance(proj, nn.Identity):
        projection = "none"
    elif type(proj) is nn.Linear and proj.bias is None:
        projection, tensors["proj.0"] = "linear", proj.weight
    elif (isinstance(proj, nn.Sequential) and len(proj) == 3 and type(proj[0]) is nn.Linear and type(proj[2]) is nn.Linear
          and type(proj[1]) is nn.GELU and proj[1].approximate == "none" and proj[0].bias is None and proj[2].bias is None):
        projection, tensors["proj.0"], tensors["proj.2"] = "mlp", proj[0].weight, proj[2].weight
    else:
        raise UnsupportedTextTower(f"text projection {proj} is not supported")
    emb = bert.embeddings
    tensors.update({"word_embeddings": emb.word_embeddings.weight, "position_embeddings": emb.position_embeddings.weight,
                    "token_type_embedding": emb.token_type_embeddings.weight[0],
                    "embeddings.ln.weight": emb.LayerNorm.weight, "embeddings.ln.bias": emb.LayerNorm.bias})
    modules = dict(bert.encoder.named_modules())
    for i in range(hf.num_hidden_layers):
        for hf_name, name in _LAYER_NAMES.items():
            m = modules[f"layer.{i}.{hf_name}"]
            tensors[f"layer.{i}.{name}.weight"], tensors[f"layer.{i}.{name}.bias"] = m.weight, m.bias
    config = {"source": type(model).__name__, "layers": hf.num_hidden_layers, "heads": hf.num_attention_heads,
              "width": hf.hidden_size, "ln_eps": float(hf.layer_norm_eps), "pad_id": int(hf.pad_token_id or 0),
              "num_positions": hf.max_position_embeddings, "pool": pool, "projection": projection,
              "output_dim": int(tensors["proj.2"].shape[0] if projection == "mlp" else tensors["proj.0"].shape[0]
                                if projection == "linear" else hf.hidden_size)}
    return config, tensors
