"""A run's checkpoint with its trainer state (optimizer moments, step, best score), and reading that state back.

``out_dir/last`` holds the state next to the checkpoint so that ``resume`` continues
exactly; ``best/`` holds the checkpoint only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mbm.models.build import save_checkpoint
from mbm.models.tokens import is_hf_text

if TYPE_CHECKING:
    from mbm.train.config import TrainConfig
    from mbm.train.run import Run

STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


def save_run(run: Run, cfg: TrainConfig, folder: Path, extra: dict, *, with_state: bool = True) -> None:
    """Checkpoint + heads (+ optimizer and step state when ``with_state``: what ``resume`` needs)."""
    from safetensors.torch import save

    tensors, meta = (
        {},
        {"step": run.step, "best": run.best, "param_groups": run.optimizer.state_dict()["param_groups"], "scalars": {}},
    )
    for i, state in run.optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{i}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{i}.{key}"] = value
    files = {STATE_TENSORS: save(tensors), STATE_JSON: json.dumps(meta).encode()} if with_state else None
    frozen_hf = bool(cfg.freeze_text) and is_hf_text(run.model)
    save_checkpoint(
        run.model,
        folder,
        run.model_cfg,
        exclude_frozen_text=frozen_hf,
        heads=(run.fusion, run.classifier),
        extra=extra,
        files=files,
    )


def load_trainer_state(run: Run, folder: Path) -> None:
    """Restore the optimizer state, step and best score ``save_run`` kept in ``folder``."""
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_JSON).read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(folder / STATE_TENSORS)).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    for key, value in meta["scalars"].items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    run.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    run.step, run.best = int(meta["step"]), float(meta["best"])
