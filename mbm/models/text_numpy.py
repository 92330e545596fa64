"""Torch-free text queries: an open_clip text tower exported once, then run with numpy.

A cold ``mbm search`` spent ~6.5 s importing torch + open_clip to encode one query in
milliseconds. ``export_text_tower`` writes ``text_tower.safetensors`` + ``text_tower.json``;
``NumpyTextEncoder.load`` reads them back with numpy + safetensors only, and ``ClipTokenizer``
reproduces open_clip's default ``SimpleTokenizer`` ids. Only ``export_text_tower`` imports
torch/open_clip (lazily, inside the call). Supported: ``CLIP`` or ``CustomTextCLIP`` with a
plain ``TextTransformer`` -- causal mask, GELU/QuickGELU, optional layer scale, pool
argmax/eos/first/last, matrix or Linear projection. Anything else raises ``UnsupportedTextTower``.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import importlib.util
import json
import logging
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import regex  # open_clip's own dependency; \p{L} needs it; imports in ~20 ms
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from mbm.atomic import write_with

log = logging.getLogger(__name__)

FORMAT, VERSION = "mbm-text-numpy", 1
WEIGHTS_FILE, CONFIG_FILE = "text_tower.safetensors", "text_tower.json"
FP32_MAX_PARAMS = 20_000_000  # smaller towers keep float32 (1e-4 agreement); bigger ones ship float16
_SPECIALS = ("<start_of_text>", "<end_of_text>")
_N_MERGES = 49152 - 256 - 2  # the merges open_clip reads from the vocab file
# exactly open_clip's pattern and flags: special tokens typed in a query map to their ids there too
_PATTERN = regex.compile("|".join(_SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
# ftfy.fix_text leaves printable ASCII without '&' unchanged (fuzzed: 200k strings), so plain
# queries skip its ~100 ms import; '&' is unescaped repeatedly by ftfy, control chars removed
_PLAIN = regex.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


class UnsupportedTextTower(ValueError):
    """The model's text tower is not one ``NumpyTextEncoder`` reproduces exactly."""


@lru_cache(maxsize=1)
def _ftfy_fix() -> Any:
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is an open_clip dependency
        log.warning("ftfy is not installed: non-ASCII queries may tokenize differently from open_clip")
        return lambda s: s
    return ftfy.fix_text


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
    merges = [tuple(line.split()) for line in lines]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + list(_SPECIALS)
    return dict(zip(order, chars)), {t: i for i, t in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}


class ClipTokenizer:
    """CLIP byte-level BPE, id for id equal to open_clip's default ``SimpleTokenizer``."""

    def __init__(self, context_length: int = 77, bpe_path: str | Path | None = None):
        self.context_length = context_length
        self._byte_char, self._ids, self._ranks = _load_vocab(str(bpe_path or default_bpe_path()))
        self.sot_id, self.eot_id = self._ids[_SPECIALS[0]], self._ids[_SPECIALS[1]]
        self._cache: dict[str, list[str]] = {s: [s] for s in _SPECIALS}

    @staticmethod
    def clean(text: str) -> str:
        """open_clip's 'lower' cleaning: ftfy, HTML unescape twice, collapse whitespace, lowercase."""
        if not _PLAIN.fullmatch(text):
            text = _ftfy_fix()(text)
        return " ".join(html.unescape(html.unescape(text)).split()).lower()

    def _bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token]
        parts = [*token[:-1], token[-1] + "</w>"]
        while len(parts) > 1:
            # merge the best-ranked adjacent pair, every occurrence left to right, until none is known
            best = min(zip(parts, parts[1:]), key=lambda p: self._ranks.get(p, _N_MERGES))
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


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    # exact GELU x*Phi(x) via Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7). The formula gives
    # erfc(|z|) directly, so the negative tail has no 1 + (-1 + tiny) cancellation.
    z = np.abs(x) * np.float32(0.7071067811865476)
    t = 1 / (1 + np.float32(0.3275911) * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    tail = (poly * np.exp(-z * z)).astype(np.float32)  # = erfc(|z|) = 2 * Phi(-|x|)
    return 0.5 * x * np.where(x >= 0, 2 - tail, tail)


_ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3))),
    "quick_gelu": lambda x: x * (0.5 + 0.5 * np.tanh(0.851 * x)),  # x*sigmoid(1.702x), no exp overflow
}


@lru_cache(maxsize=1)
def _blas_threads() -> Any:
    # OpenBLAS threads spin-wait for each other: with a busy second core one 8-token query took
    # 1.25 s on 2 threads and 48 ms on 1. threadpoolctl is optional (present with scikit-learn).
    try:
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController()
    except Exception:  # noqa: BLE001 - absent or failing: keep the BLAS defaults
        return None


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    # one GEMM over all (batch, position) rows instead of one per batch item
    return (x.reshape(-1, x.shape[-1]) @ w.T + b).reshape(*x.shape[:-1], w.shape[0])


class NumpyTextEncoder:
    """An exported text tower run with numpy: ``encode_texts`` equals normalized ``model.encode_text``."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray], tokenizer: ClipTokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.dim = int(config["output_dim"])
        self._w = {k: v if k == "token_embedding" else v.astype(np.float32, copy=False) for k, v in weights.items()}
        self._act = _ACTIVATIONS[config["activation"]]

    @classmethod
    def load(cls, folder: str | Path) -> NumpyTextEncoder | None:
        """The encoder exported to ``folder``, or None when the files are absent, partial or mismatched."""
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            if (config.get("format"), config.get("version")) != (FORMAT, VERSION) or config["activation"] not in _ACTIVATIONS:
                return None
            with safe_open(str(folder / WEIGHTS_FILE), framework="numpy") as f:
                if (f.metadata() or {}).get("export_id") != config["export_id"]:  # files from two exports
                    return None
                weights = {k: f.get_tensor(k) for k in f.keys()}
            if config["tokenizer"]["kind"] != "clip-bpe":
                return None
            encoder = cls(config, weights, ClipTokenizer(config["tokenizer"]["context_length"]))
            # a one-text forward proves every weight the config asks for is there with its shape
            if encoder.encode_tokens(encoder.tokenizer([""])).shape != (1, encoder.dim):
                return None
        except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as e:
            log.debug("no usable numpy text tower in %s: %s", folder, e)
            return None
        return encoder

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalized float32 ``(N, dim)`` embeddings of ``texts``."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenizer(list(texts))
        # batch texts of similar length: a batch runs up to its longest text (see encode_tokens)
        order, out = np.argsort(self._positions(ids), kind="stable"), np.empty((len(ids), self.dim), np.float32)
        for i in range(0, len(ids), batch_size):
            out[order[i : i + batch_size]] = self.encode_tokens(ids[order[i : i + batch_size]])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # as F.normalize

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """The position each row is pooled from (argmax: EOT has the highest id; ties take the first, as torch)."""
        pool = self.config["pool_type"]
        if pool in ("argmax", "eos"):
            return (ids if pool == "argmax" else ids == self.config["eos_id"]).argmax(1)
        return np.full(len(ids), 0 if pool == "first" else ids.shape[1] - 1)

    def encode_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Unnormalized features of token ids ``(N, context_length)``, as ``model.encode_text`` returns."""
        pos = self._positions(ids)
        # Causal mask: position p sees only positions <= p, so nothing after the pooled token can
        # change it. Run only up to the furthest pooled position; shorter rows need no padding mask.
        n = int(pos.max()) + 1
        small = len(ids) * n <= 512 and _blas_threads() is not None  # queries: one BLAS thread, see _blas_threads
        with _blas_threads().limit(limits=1, user_api="blas") if small else contextlib.nullcontext():
            return self._forward(ids[:, :n], pos)

    def _forward(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        c, w, n = self.config, self._w, ids.shape[1]
        x = w["token_embedding"][ids].astype(np.float32) + w["positional_embedding"][:n]
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        heads, eps = c["heads"], c["ln_eps"]
        for i in range(c["layers"]):
            p = f"blocks.{i}."
            h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            h = self._attention(h, w[p + "attn.in_proj.weight"], w[p + "attn.in_proj.bias"], mask, heads)
            h = _linear(h, w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"])
            x = x + (h * w[p + "ls_1"] if c["layer_scale"] else h)
            h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            h = self._act(_linear(h, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"]))
            h = _linear(h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
            x = x + (h * w[p + "ls_2"] if c["layer_scale"] else h)
        x = x[np.arange(len(ids)), pos]  # LayerNorm is per token, so pooling before ln_final is the same and cheaper
        if c["final_ln"]:
            x = _layer_norm(x, w["ln_final.weight"], w["ln_final.bias"], eps)
        if c["projection"] != "none":
            x = x @ w["text_projection"] + (w["text_projection_bias"] if c["projection"] == "linear" else 0)
        return x.astype(np.float32)

    @staticmethod
    def _attention(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, mask: np.ndarray, heads: int) -> np.ndarray:
        b, n, d = x.shape
        q, k, v = _linear(x, w_in, b_in).reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
        s = (q * np.float32((d // heads) ** -0.5)) @ k.transpose(0, 1, 3, 2) + mask
        s = np.exp(s - s.max(-1, keepdims=True))  # stable softmax; the diagonal keeps each max finite
        s /= s.sum(-1, keepdims=True)
        return (s @ v).transpose(0, 2, 1, 3).reshape(b, n, d)


def export_text_tower(model: Any, tokenizer_info: Any, folder: str | Path, *, dtype: str = "auto", meta: dict | None = None) -> None:
    """Write ``model``'s text tower to ``folder`` as ``text_tower.safetensors`` + ``text_tower.json``.

    ``tokenizer_info`` is either a dict (``{"kind": "clip-bpe", "context_length": 77}``; the
    length defaults to the model's) or open_clip's tokenizer object, which is then checked
    by behaviour against ``ClipTokenizer``. ``dtype``: "auto" (float32 below 20M parameters,
    else float16), "float32" or "float16". ``meta`` is stored as-is under ``"meta"``.
    Raises ``UnsupportedTextTower`` for anything ``NumpyTextEncoder`` would not reproduce.
    """
    import torch  # only the export needs torch: it runs where the model is already loaded

    config, tensors = _describe(model)
    config["tokenizer"] = _tokenizer_config(tokenizer_info, config["num_positions"])
    params = sum(t.numel() for t in tensors.values())
    dtype = ("float32" if params < FP32_MAX_PARAMS else "float16") if dtype == "auto" else dtype
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype {dtype!r} is not float32, float16 or auto")
    arrays = {}
    for name, t in tensors.items():
        a = t.detach().to("cpu", torch.float32).numpy()  # also takes bf16/fp16 and CUDA models
        # half only for matrices (vectors: LayerNorm, biases, layer scale are tiny and sensitive), and
        # not for one with values beyond float16's range; load() makes everything float32 again
        half = dtype == "float16" and a.ndim == 2 and np.abs(a).max(initial=0) < 65504
        arrays[name] = np.ascontiguousarray(a.astype(np.float16) if half else a)
    config.update(format=FORMAT, version=VERSION, export_id=uuid.uuid4().hex, dtype=dtype, params=int(params), meta=meta or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # weights first, config last: each lands whole (temp + os.replace), and the export_id both
    # carry tells load() when it sees the weights of one export next to the config of another
    write_with(folder / WEIGHTS_FILE, lambda p: Path(p).write_bytes(save(arrays, metadata={"export_id": config["export_id"]})))
    write_with(folder / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=1)))




def _tokenizer_config(info: Any, num_positions: int) -> dict:
    if isinstance(info, dict):
        kind, length = info.get("kind"), int(info.get("context_length") or num_positions)
    else:  # an open_clip tokenizer: accept it when it tokenizes like ClipTokenizer
        kind, length = "clip-bpe", int(getattr(info, "context_length", 0) or num_positions)
        probe = ["A red car!", "café &amp; 🚗 <end_of_text>", "Ünïcödé   spaces\t", "x " * 100]
        try:
            same = np.array_equal(np.asarray(info(probe, context_length=length)), ClipTokenizer(length)(probe))
        except Exception:  # noqa: BLE001 - any failure means "not the default CLIP BPE"
            same = False
        if not same:
            raise UnsupportedTextTower(f"tokenizer {type(info).__name__} does not tokenize like open_clip's default CLIP BPE")
    if kind != "clip-bpe":
        raise UnsupportedTextTower(f"tokenizer kind {kind!r} is not supported (only 'clip-bpe')")
    if not 2 <= length <= num_positions:
        raise UnsupportedTextTower(f"tokenizer context_length {length} does not fit the model's {num_positions} positions")
    return {"kind": kind, "context_length": length}


def _describe(model: Any) -> tuple[dict, dict]:
    """The forward's settings and the weights it needs; raises for anything the numpy forward lacks."""
    import torch
    from open_clip import transformer as oc
    from open_clip.model import CLIP, CustomTextCLIP
    from torch import nn

    # exact types, not isinstance: a subclass may override the forward reproduced here
    if isinstance(model, CLIP) and type(model).encode_text is CLIP.encode_text:
        tower, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif isinstance(model, CustomTextCLIP) and type(getattr(model, "text", None)) is oc.TextTransformer:
        tower, pool, eos = model.text, model.text.pool_type, model.text.eos_id
        if tower.cls_emb is not None or tower.use_pad_mask:
            raise UnsupportedTextTower("text towers with a class token (embed_cls) or a padding mask are not supported")
    else:
        inner = type(getattr(model, "text", model)).__name__
        raise UnsupportedTextTower(f"text tower {inner} of {type(model).__name__} is not open_clip's TextTransformer")
    mask, num_pos, blocks = tower.attn_mask, tower.positional_embedding.shape[0], tower.transformer.resblocks
    causal = torch.full((num_pos, num_pos), float("-inf")).triu(1)
    if mask is None or mask.shape != causal.shape or not torch.equal(mask.detach().float().cpu(), causal):
        raise UnsupportedTextTower("only causal text towers are supported (no_causal_mask or another mask found)")
    if pool not in ("argmax", "eos", "first", "last"):
        raise UnsupportedTextTower(f"text pool_type {pool!r} is not supported")
    # every module must be one whose forward the numpy code reproduces: this refuses custom blocks
    # (qk_norm, scaled cosine attention, head scales, MLP norm), other activations and norms
    known = (oc.Transformer, nn.ModuleList, oc.ResidualAttentionBlock, nn.MultiheadAttention, nn.Sequential, nn.Linear,
             nn.modules.linear.NonDynamicallyQuantizableLinear, nn.GELU, oc.QuickGELU, oc.LayerScale, nn.Identity,
             nn.LayerNorm, oc.LayerNorm, oc.LayerNormFp32)
    odd = sorted({type(m).__name__ for m in [*tower.transformer.modules(), tower.ln_final] if type(m) not in known})
    if odd or any(hasattr(b, "ln_1_kv") or b.attn.bias_k is not None or b.attn.add_zero_attn or not b.attn._qkv_same_embed_dim
                  for b in blocks):
        raise UnsupportedTextTower(f"text transformer parts {odd or 'cross/bias_kv attention'} are not supported")
    tensors = {"token_embedding": tower.token_embedding.weight, "positional_embedding": tower.positional_embedding}
    for i, b in enumerate(blocks):
        p = f"blocks.{i}."
        tensors.update({p + "attn.in_proj.weight": b.attn.in_proj_weight, p + "attn.in_proj.bias": b.attn.in_proj_bias})
        for name, m in (("ln_1", b.ln_1), ("ln_2", b.ln_2), ("attn.out_proj", b.attn.out_proj), ("mlp.c_fc", b.mlp.c_fc),
                        ("mlp.c_proj", b.mlp.c_proj)):
            tensors.update({p + name + ".weight": m.weight, p + name + ".bias": m.bias})
        tensors.update({p + name: getattr(b, name).gamma for name in ("ls_1", "ls_2") if type(getattr(b, name)) is oc.LayerScale})
    final_ln = type(tower.ln_final) is not nn.Identity
    if final_ln:
        tensors.update({"ln_final.weight": tower.ln_final.weight, "ln_final.bias": tower.ln_final.bias})
    proj, width = tower.text_projection, tower.token_embedding.embedding_dim
    projection = "none" if proj is None else "linear" if type(proj) is nn.Linear else "matrix"
    projection = None if projection == "matrix" and not isinstance(proj, torch.Tensor) else projection
    if projection == "linear":
        tensors["text_projection"] = proj.weight.t()  # stored (width, out) like the matrix form
        tensors["text_projection_bias"] = proj.bias if proj.bias is not None else proj.weight.new_zeros(proj.out_features)
    elif projection == "matrix":
        tensors["text_projection"] = proj
    kinds = {
        "activation": {"quick_gelu" if type(b.mlp.gelu) is oc.QuickGELU else f"gelu{'' if b.mlp.gelu.approximate == 'none' else '_tanh'}"
                       for b in blocks},
        "layer_scale": {type(getattr(b, n)) is oc.LayerScale for b in blocks for n in ("ls_1", "ls_2")},
        "ln_eps": {m.eps for m in [*tower.transformer.modules(), tower.ln_final] if isinstance(m, nn.LayerNorm)},
    }
    if projection is None or any(t is None for t in tensors.values()) or any(len(v) != 1 for v in kinds.values()):
        raise UnsupportedTextTower(f"projection {type(proj).__name__}, a missing bias/affine or blocks that differ ({kinds}): not supported")
    return {
        "source": type(model).__name__, "width": width, "heads": blocks[0].attn.num_heads, "layers": len(blocks),
        "mlp_width": blocks[0].mlp.c_fc.out_features, "num_positions": num_pos, "vocab_size": tower.token_embedding.num_embeddings,
        "output_dim": width if proj is None else tensors["text_projection"].shape[1], "attn_mask": "causal",
        "pool_type": pool, "eos_id": eos, "final_ln": final_ln, "projection": projection, **{k: v.pop() for k, v in kinds.items()},
    }, tensors
