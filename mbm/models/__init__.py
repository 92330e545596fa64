"""Encoders (open_clip dual towers) and the heads trained beside them."""

from mbm.models.factory import Encoder, ModelInfo, list_models, load_model

__all__ = ["Encoder", "ModelInfo", "list_models", "load_model"]
