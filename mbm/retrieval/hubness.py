"""Hubness correction for re-ranking: a picture that sits near every query is worth less to each one.

In a shared embedding space some pictures are *hubs*: close to many captions at once, so they
climb into the top of queries they do not answer. The inverted-softmax correction of QB-Norm
(Bogolin et al., CVPR 2022) measures how much a fixed *bank* of typical queries likes picture
``i`` and takes it out of its score::

    hub(i)     = (1 / beta) * log( mean_b exp(beta * cos(b, i)) )     # b: the bank's query embeddings
    corrected  = cos(q, i) - hub_weight * hub(i)

The bank ships with the model (``mbm_rerank.safetensors`` in a checkpoint folder: a sample of the
training captions' text embeddings, never an evaluation's queries), so the correction needs
nothing from the collection but the candidates' own vectors, and costs one small matrix product per
search (N candidates x bank size). Re-ranking orders the dual encoder's top N by::

    fusion_weight * fusion logit + logit_scale * corrected cosine

with ``beta``, ``hub_weight`` and ``fusion_weight`` chosen on the validation split (see
``benchmarks/hub_rerank.py``) and stored in the same file. The file is read without torch. It is
not part of the model's fingerprint: it changes the order of a search, never a stored embedding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RERANK_FILE = "mbm_rerank.safetensors"
FORMAT = 1


@dataclass(frozen=True)
class RerankCalibration:
    """How a model's re-ranking combines its experts; ``bank`` (B, D) float32, L2-normalized rows."""

    bank: np.ndarray
    beta: float
    hub_weight: float
    fusion_weight: float

    def hub(self, vectors: np.ndarray) -> np.ndarray:
        """``hub(i)`` of each row of ``vectors`` (normalized image embeddings), float64 ``(N,)``."""
        if len(vectors) == 0:
            return np.zeros(0, np.float64)
        # the product in float32 (4x faster than float64 here; cosines need no more), the log-mean-exp in float64
        sims = (np.asarray(vectors, np.float32) @ self.bank.T).astype(np.float64)
        top = sims.max(1, keepdims=True)
        return top[:, 0] + np.log(np.exp(self.beta * (sims - top)).mean(1)) / self.beta

    def penalty(self, vectors: np.ndarray) -> np.ndarray:
        """What comes off each candidate's cosine: ``hub_weight * hub(i)``."""
        if self.hub_weight == 0.0:
            return np.zeros(len(vectors), np.float64)
        return self.hub_weight * self.hub(vectors)


def expert_weights(calibration: RerankCalibration | None, head_dual_weight: float) -> tuple[float, float]:
    """``(fusion_weight, dual_weight)`` of the re-ranking order: the calibration's fusion weight beside the dual
    logit as is when the model has one, else the fusion logit as is beside the head's own ``dual_weight``."""
    if calibration is not None:
        return calibration.fusion_weight, 1.0
    return 1.0, float(head_dual_weight)


def combined_scores(
    fusion_logits: np.ndarray,
    dual_logits: np.ndarray,
    fusion_weight: float,
    dual_weight: float,
    penalty_logits: np.ndarray | None = None,
) -> np.ndarray:
    """What re-ranking orders by (any shape, elementwise, float64): ``fusion_weight * fusion logit + dual_weight *
    (dual logit - hubness penalty)``, the logits being ``logit_scale`` times cosines / penalties."""
    dual = np.asarray(dual_logits, np.float64)
    if penalty_logits is not None:
        dual = dual - np.asarray(penalty_logits, np.float64)
    return fusion_weight * np.asarray(fusion_logits, np.float64) + dual_weight * dual


def save(folder: str | Path, calibration: RerankCalibration) -> Path:
    """Write ``mbm_rerank.safetensors`` into ``folder`` (the bank as float16), atomically."""
    from safetensors.numpy import save as save_bytes

    from mbm.atomic import write_bytes

    bank = np.ascontiguousarray(calibration.bank, np.float16)
    meta = {
        "format": str(FORMAT),
        "beta": repr(float(calibration.beta)),
        "hub_weight": repr(float(calibration.hub_weight)),
        "fusion_weight": repr(float(calibration.fusion_weight)),
    }
    path = Path(folder) / RERANK_FILE
    write_bytes(path, save_bytes({"bank": bank}, metadata=meta))
    return path


def load(folder: str | Path | None) -> RerankCalibration | None:
    """The calibration saved in a checkpoint folder, or None (no file: re-ranking goes uncorrected)."""
    if folder is None:
        return None
    path = Path(folder) / RERANK_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    return _load(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(path: str, size: int, mtime_ns: int) -> RerankCalibration:
    from safetensors import SafetensorError, safe_open

    from mbm.errors import ModelError

    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            bank = np.asarray(f.get_tensor("bank"), np.float32)
        if int(meta.get("format", FORMAT)) > FORMAT:
            raise ModelError(f"{path} uses format {meta['format']}, newer than this mbm — upgrade mbm")
        calibration = RerankCalibration(
            bank=bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12),
            beta=float(meta["beta"]),
            hub_weight=float(meta["hub_weight"]),
            fusion_weight=float(meta["fusion_weight"]),
        )
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ModelError(f"re-ranking calibration {path} cannot be read ({e}) — delete it to re-rank without it") from e
    if bank.ndim != 2 or not len(bank) or calibration.beta <= 0:
        raise ModelError(f"re-ranking calibration {path} holds no usable bank — delete it to re-rank without it")
    return calibration
