"""Hidden states of a frozen Hugging Face text transformer, computed once per caption of a run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mbm.models.tokens import hf_hidden, text_pad_id, trim_padding

if TYPE_CHECKING:
    from mbm.train.cached_training import TextStore


class TextCache:
    """Hidden states of a frozen HF text transformer for every caption, computed once (fp16, real tokens only).

    Always computed in the same fixed batches and always read back through fp16, so
    values never depend on when a caption was first needed: resumed runs stay exact.
    """

    def __init__(self, model: Any, tokens: torch.Tensor, device: str, batch: int = 256, store: TextStore | None = None):
        """``store`` (a ``cached_training.TextStore``): hidden states kept on disk between runs, keyed by token ids."""
        self.device, pad = device, text_pad_id(model)
        lengths = (tokens != pad).sum(1)
        keys = (
            [bytes(tokens[i, : int(lengths[i])].numpy().astype("int32").tobytes()) for i in range(len(tokens))]
            if store
            else []
        )
        known = store.load() if store is not None else {}
        self.hidden: list[torch.Tensor] = (
            [known.get(k, torch.empty(0)) for k in keys] if store else [torch.empty(0)] * len(tokens)
        )
        todo = torch.tensor([i for i in range(len(tokens)) if not store or keys[i] not in known], dtype=torch.long)
        order = todo[torch.argsort(lengths[todo], stable=True)]  # similar lengths together: little padding
        was_training = model.text.training
        model.text.eval()
        with torch.no_grad():
            for s in range(0, len(order), batch):
                idx = order[s : s + batch]
                ids = trim_padding(tokens[idx], pad).to(device)
                hidden, _ = hf_hidden(model, ids)
                for j, i in enumerate(idx.tolist()):
                    self.hidden[i] = hidden[j, : int(lengths[i])].to(torch.float16).cpu()
        model.text.train(was_training)
        if store is not None and len(order):
            store.save({**known, **{keys[i]: self.hidden[i] for i in order.tolist()}})

    def get(self, caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.hidden[i] for i in caption_ids.tolist()]
        hidden = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(self.device, torch.float32)
        mask = torch.arange(hidden.shape[1])[None, :] < torch.tensor([len(r) for r in rows])[:, None]
        return hidden, mask.to(self.device)
