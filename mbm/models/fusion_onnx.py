"""Torch-free re-ranking of text queries: the fusion head exported to ONNX beside the text tower.

A text query's re-ranking needs the query's fusion tokens and one forward of the fusion head over
the candidates' stored image tokens: milliseconds of work behind seconds of ``import torch``. With
``export_fusion_onnx`` (torch, at index time, into the collection's query-encoder folder) writing
``fusion.onnx`` and ``fusion.json``, ``OnnxFusion`` computes the same match logits in ONNX Runtime
from the text tower's token features (``OnnxTextEncoder.encode_tokens``): the fusion's text
projection, rounded to float16 as stored tokens are, then the cross-attention blocks and the head.

``fusion.json`` also records what the re-ranking order needs from the model (its logit scale and
the head's dual weight), so a cold ``mbm search`` re-ranks without loading the model. The export is
checked against torch on probe inputs; anything it does not reproduce raises ``UnsupportedFusion``
and text queries re-rank through torch, as before.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT, VERSION = "mbm-fusion-onnx", 1
MODEL_FILE, CONFIG_FILE = "fusion.onnx", "fusion.json"
MAX_LOGIT_GAP = 1e-3  # largest difference to torch's logits on the export's probes


class UnsupportedFusion(ValueError):
    """The model's fusion head cannot be exported for ``OnnxFusion``."""


class OnnxFusion:
    """An exported fusion head: ``logits(text_tokens, images)`` equals ``FusionModel.match`` on the projected query."""

    def __init__(self, config: dict, session: Any):
        self.config, self.session = config, session
        self.logit_scale = float(config["logit_scale"])
        self.dual_weight = float(config["dual_weight"])
        self.max_text_tokens = int(config["max_text_tokens"])

    @classmethod
    def load(cls, folder: str | Path) -> OnnxFusion | None:
        """The fusion head exported to ``folder``, or None when its files are absent, partial or unusable."""
        from mbm.models.text_onnx import ort_session

        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            if (config.get("format"), config.get("version")) != (FORMAT, VERSION):
                return None
            fusion = cls(config, ort_session(folder / MODEL_FILE))
            probe = np.zeros((1, int(config["probe_tokens"]), int(config["width"])), np.float32)
            if fusion.logits(np.zeros((1, int(config["text_dim"])), np.float32), probe).shape != (1,):
                return None
        except Exception as e:  # noqa: BLE001 - missing/partial files or onnxruntime absent: re-rank with torch
            log.debug("no usable ONNX fusion head in %s: %s", folder, e)
            return None
        return fusion

    def logits(self, text_tokens: np.ndarray, images: np.ndarray) -> np.ndarray:
        """Match logits ``(N,)`` float64 of one text's token features ``(n, text_dim)`` (the text tower's, real tokens
        only) against ``N`` candidates' stored image tokens ``(N, G, width)``."""
        if not len(images):
            return np.zeros(0, np.float64)
        tokens = self.cut(np.asarray(text_tokens, np.float32))
        feeds = {"text_tokens": tokens[None], "images": np.ascontiguousarray(images, np.float32)}
        return self.session.run(None, feeds)[0].astype(np.float64)

    def cut(self, text_tokens: np.ndarray) -> np.ndarray:
        """The first ``max_text_tokens`` of a text's token features (all of them where the head sets no cap)."""
        return text_tokens[: self.max_text_tokens] if self.max_text_tokens > 0 else text_tokens


# ---- export (torch; runs where the model is already loaded) ----


def export_fusion_onnx(encoder: Any, folder: str | Path) -> None:
    """Write ``encoder``'s fusion head to ``folder`` and check it against torch; ``UnsupportedFusion`` otherwise."""
    import torch

    from mbm.models.encoder import rerank_logit_scale

    fusion = encoder.fusion
    if fusion is None:
        raise UnsupportedFusion(f"model {encoder.spec!r} has no fusion head")
    fusion = getattr(fusion, "_load", lambda: fusion)()  # a fast start's handle: the head itself
    cfg = fusion.cfg
    # how many tokens an image stores (the graph takes any number; this only sizes the probes): the pooled grid,
    # or for a head over a ViT's patch tokens (image_grid 0) a stand-in count, plus the embedding's token
    tokens = (cfg.image_grid * cfg.image_grid if cfg.image_grid > 0 else 16) + (1 if cfg.embed_dim > 0 else 0)
    folder = Path(folder)
    path = folder / MODEL_FILE
    head = _match_module(fusion).to("cpu", torch.float32).eval()
    rng = torch.Generator().manual_seed(0)
    example = (torch.randn(5, cfg.text_dim, generator=rng)[None], torch.randn(3, tokens, cfg.width, generator=rng))
    try:
        with torch.inference_mode(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                head,
                example,
                str(path),
                input_names=["text_tokens", "images"],
                output_names=["logits"],
                dynamic_axes={
                    "text_tokens": {1: "tokens"},
                    "images": {0: "candidates", 1: "image_tokens"},
                    "logits": {0: "candidates"},
                },
                opset_version=17,
                dynamo=False,
            )
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UnsupportedFusion(f"ONNX export failed: {type(e).__name__}: {first}") from e
    config = {
        "format": FORMAT,
        "version": VERSION,
        "logit_scale": rerank_logit_scale(encoder),
        "dual_weight": float(cfg.dual_weight),
        "max_text_tokens": int(cfg.max_text_tokens),
        "text_dim": int(cfg.text_dim),
        "width": int(cfg.width),
        "probe_tokens": tokens,  # the image tokens of the load-time probe
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    exported = OnnxFusion.load(folder)
    if exported is None:
        raise UnsupportedFusion("the ONNX export does not load in onnxruntime")
    gap = _logit_gap(exported, head, cfg.text_dim, tokens, cfg.width)
    if gap > MAX_LOGIT_GAP:
        raise UnsupportedFusion(f"the ONNX export's match logits differ from the model's by up to {gap:.2e}")


def _logit_gap(exported: OnnxFusion, head: Any, text_dim: int, tokens: int, width: int) -> float:
    """The largest difference between the export's logits and torch's, on probes of several lengths and sizes."""
    import torch

    rng = np.random.default_rng(1)
    gap = 0.0
    for n, candidates in ((1, 1), (3, 7), (16, 50), (40, 2)):
        text = rng.standard_normal((n, text_dim)).astype(np.float32)
        images = rng.standard_normal((candidates, tokens, width)).astype(np.float16).astype(np.float32)
        with torch.inference_mode():
            want = head(torch.from_numpy(exported.cut(text))[None], torch.from_numpy(images)).double().numpy()
        gap = max(gap, float(np.abs(exported.logits(text, images) - want).max()))
    return gap


def _match_module(fusion: Any) -> Any:
    import torch

    class Match(torch.nn.Module):
        """One text's token features ``(1, n, text_dim)`` and N candidates' image tokens -> match logits ``(N,)``:
        ``FusionModel.project_text`` (as float16, as the torch search path holds query tokens), then ``match``."""

        def __init__(self, fusion: Any):
            super().__init__()
            self.fusion = fusion

        def forward(self, text_tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
            x = self.fusion.text_in(text_tokens).to(torch.float16).to(torch.float32)
            x = x.expand(images.shape[0], -1, -1)
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
            return self.fusion.match(x, mask, images)

    return Match(fusion)
