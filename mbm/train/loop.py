"""Joint training of a dual encoder with a fusion (ITM) head and a classifier head.

Loss = w_contrastive * InfoNCE(image, text) + w_itm * BCE(fusion(pairs)) + w_cls * CE(classifier(image)),
with ITM negatives mined from in-batch similarities (one hard text per image, one hard
image per text, duplicates of the same caption or group never used as negatives).

A run folder ``out_dir`` holds ``config.json``, ``metrics.jsonl`` (one line per logged
step and per epoch), ``last/`` (checkpoint + optimizer state, for ``resume``) and
``best/`` (best validation mean recall). Every random draw is a function of
(seed, epoch, step), so a resumed run repeats the losses of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mbm.errors import UsageError
from mbm.models.build import (
    create_from_config,
    is_checkpoint_dir,
    load_checkpoint,
    load_model_cfg,
    read_checkpoint_config,
    save_checkpoint,
)
from mbm.models.fusion import FusionConfig, FusionModel
from mbm.models.heads import ClassifierHead
from mbm.models.image_towers import ClassBridgeHead, mbm_section
from mbm.models.losses import (
    clamp_logit_scale_,
    classification_loss,
    contrastive_loss,
    distillation_loss,
    hard_negatives,
    itm_loss,
)
from mbm.models.tokens import (
    hf_hidden,
    hf_pool,
    image_tokens,
    is_hf_text,
    supports_hidden_cache,
    text_pad_id,
    text_tokens,
    trim_padding,
)
from mbm.train.augment import train_transform
from mbm.train.data import Batch, EpochBatches, PairDataset, collate, describe, label_index, load_rows
from mbm.train.evaluate import embed_rows, recall_at_k
from mbm.train.features import trunk_features

log = logging.getLogger(__name__)

STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``out_dir/config.json``."""

    manifest: str
    out_dir: str
    model: str = "mbm-lite0"  # a config name/JSON file (fresh model) or a checkpoint folder (fine-tune)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 1.0
    w_contrastive: float = 1.0
    w_itm: float = 1.0
    w_cls: float = 0.5
    # LiT: keep the pretrained text transformer (its projection still trains). None: freeze a pretrained tower
    # (a Hugging Face one such as MiniLM, or a checkpoint's), train a freshly initialised open_clip one
    freeze_text: bool | None = None
    freeze_image: bool | None = (
        None  # None: frozen when the image tower starts pretrained (a config's packaged weights)
    )
    augment: float = 0.5  # strength of mbm.train.augment (0 = none); 0.5 measured best (bundled model card)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 on CPU (bf16 is slower without AMX)
    val_every: int = 1  # epochs between validations (0 = never)
    num_workers: int = 0
    max_steps: int | None = None  # stop early (tests); the LR schedule still spans all epochs
    resume: bool = False
    log_every: int = 10
    # FusionConfig fields (text_dim/image_dim are filled in); 128 wide and 16 text tokens keep ITM to ~1/3 of
    # a CPU step for mbm-small (256 wide: 2x slower); on a GPU the FusionConfig defaults cost little
    # image_grid 3: a 7x7 CNN map (or a ViT's patch grid) is pooled to 9 tokens: 5x less to cache and to store per item
    fusion: dict = field(
        default_factory=lambda: {"width": 128, "layers": 2, "heads": 4, "max_text_tokens": 16, "image_grid": 3}
    )
    cache_text: bool = True  # frozen HF text: compute each caption's hidden states once
    val_rerank_top: int = 0  # also report fusion re-ranked R@K on validation (costs time)
    select_on: str = (
        "mean_recall"  # validation metric that picks best/: mean_recall, or rerank_mean (needs val_rerank_top)
    )
    sources: list = field(default_factory=list)  # train/validate on these sources only; "-name" leaves one out
    # knowledge distillation from the image tower's ImageNet classifier (models with a class-bridge head only)
    w_kd: float = 1.0
    kd_temperature: float = 2.0
    # a folder of cached frozen-trunk features (mbm.train.features): filled on first use, then each epoch runs the
    # heads only; views 0..views-1 are trained on (0 = the picture as indexed, 1.. = augmented)
    feature_cache: str | None = None
    views: int = 1
    image_trainable_blocks: int = 0  # fine-tune the image trunk's last N block groups (no feature cache then)
    # score ITM pairs for the first N rows of a batch only (0 = all; negatives are still mined over the whole batch):
    # the fusion head costs 3 forward passes per row, and a big contrastive batch need not pay it for every row
    itm_rows: int = 0


class _Run:
    """The mutable pieces of one run, built once by ``_setup``."""

    model: Any
    fusion: FusionModel | None
    classifier: ClassifierHead | None
    optimizer: torch.optim.Optimizer
    model_cfg: dict
    preprocess_val: Any
    tokenizer: Any
    train_set: PairDataset
    val_rows: list
    text_cache: _TextCache | None
    val_cache: Any = None  # cached val features (feature_cache runs)
    itm_rows: int = 0
    step: int = 0
    best: float = -1.0
    steps_per_epoch: int = 0


def _device_and_precision(cfg: TrainConfig) -> tuple[str, bool]:
    device = cfg.device if cfg.device not in ("", "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but no CUDA GPU is visible — use device='cpu'")
    if cfg.select_on not in ("mean_recall", "rerank_mean") or (
        cfg.select_on == "rerank_mean" and cfg.val_rerank_top <= 0
    ):
        raise UsageError(
            f"select_on={cfg.select_on!r} — use mean_recall, or rerank_mean together with val_rerank_top > 0"
        )
    if cfg.feature_cache and (cfg.image_trainable_blocks or not cfg.freeze_image):
        raise UsageError(
            "a feature cache needs a frozen image trunk — drop --feature-cache, or --image-trainable-blocks"
        )
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"precision {cfg.precision!r} is not supported for training — use auto, fp32 or bf16")
    return device, cfg.precision == "bf16" or (cfg.precision == "auto" and device.startswith("cuda"))


def _token_dims(model: Any, tokenizer: Any) -> tuple[int, int, int]:
    """(embed dim, text token dim, image token dim), probed with one dummy pair."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    was_training = model.training
    model.eval()  # in train mode the dummy picture would move BatchNorm's running statistics
    with torch.no_grad():
        device = next(model.parameters()).device
        _, img = image_tokens(model, torch.zeros(1, 3, size, size, device=device))
        pooled, txt, _ = text_tokens(model, tokenizer(["x"]).to(device))
    model.train(was_training)
    return pooled.shape[-1], txt.shape[-1], img.shape[-1]


def _build_model(cfg: TrainConfig, folder: Path | None) -> tuple[Any, Any, Any, dict, dict]:
    """(model, preprocess_val, tokenizer, heads, unresolved model cfg): from a checkpoint folder or a fresh config."""
    if folder is not None:
        model, preprocess_val, tokenizer, heads = load_checkpoint(folder)
        return model, preprocess_val, tokenizer, heads, read_checkpoint_config(folder)["model_cfg"]
    model, _, preprocess_val, tokenizer = create_from_config(cfg.model)
    return model, preprocess_val, tokenizer, {}, load_model_cfg(cfg.model)


def _resolve_freeze_text(cfg: TrainConfig) -> TrainConfig:
    """Settle ``freeze_text=None`` / ``freeze_image=None``: frozen when the tower starts from trained weights."""
    model_cfg = (
        read_checkpoint_config(cfg.model)["model_cfg"] if is_checkpoint_dir(cfg.model) else load_model_cfg(cfg.model)
    )
    if cfg.freeze_image is None:
        pretrained_image = bool(mbm_section(model_cfg).get("image_weights")) and not cfg.image_trainable_blocks
        cfg = replace(cfg, freeze_image=pretrained_image)
    pretrained = is_checkpoint_dir(cfg.model) or "hf_model_name" in model_cfg.get("text_cfg", {})
    if cfg.freeze_text is None:
        return replace(cfg, freeze_text=pretrained)
    if cfg.freeze_text and not pretrained:
        log.warning(
            "the text tower of %s starts from random weights and freeze_text keeps it so; "
            "train it (--train-text) unless that is the point",
            cfg.model,
        )
    return cfg


def _setup(cfg: TrainConfig, device: str) -> _Run:
    run = _Run()
    run.itm_rows = cfg.itm_rows
    out = Path(cfg.out_dir)
    resume_from = out / "last" if cfg.resume and (out / "last" / STATE_JSON).is_file() else None
    source = Path(cfg.model).expanduser()
    torch.manual_seed(cfg.seed)  # the fresh image tower and heads start from the same weights every run
    run.model, run.preprocess_val, run.tokenizer, heads, run.model_cfg = _build_model(
        cfg, resume_from or (source if is_checkpoint_dir(source) else None)
    )
    train_rows, run.val_rows = (
        load_rows(cfg.manifest, "train", cfg.sources),
        load_rows(cfg.manifest, "val", cfg.sources),
    )
    if len(train_rows) < cfg.batch_size:
        raise UsageError(f"{cfg.manifest} has {len(train_rows)} training pairs, fewer than batch_size={cfg.batch_size}")
    labels = label_index(train_rows) if cfg.w_cls > 0 else {}
    embed_dim, text_dim, image_dim = _token_dims(run.model, run.tokenizer)
    run.fusion = heads.get("fusion") or (
        FusionModel(FusionConfig(**{**cfg.fusion, "text_dim": text_dim, "image_dim": image_dim}))
        if cfg.w_itm > 0
        else None
    )
    run.classifier = heads.get("classifier") or (ClassifierHead(embed_dim, list(labels)) if labels else None)
    if run.classifier is not None:
        labels = {name: i for i, name in enumerate(run.classifier.labels)}
    for module in (run.model, run.fusion, run.classifier):
        if module is not None:
            module.to(device)
    if cfg.freeze_text:
        run.model.lock_text_tower()
    if cfg.freeze_image or cfg.image_trainable_blocks:
        # not freeze_bn_stats: open_clip swaps in torchvision's FrozenBatchNorm2d, which drops the activation of timm's
        # BatchNormAct2d (EfficientNet's ReLU6); the tower runs in eval mode instead (_set_train_mode)
        run.model.lock_image_tower(unlocked_groups=cfg.image_trainable_blocks)
    pp = preprocess_of(run.model)
    if cfg.feature_cache:
        from mbm.train.features import cached_sets

        run.train_set, run.val_cache = cached_sets(run, cfg, train_rows, labels)
    else:
        transform = train_transform(pp["size"], pp["mean"], pp["std"], cfg.augment)
        run.train_set = PairDataset(train_rows, transform, run.tokenizer, labels, seed=cfg.seed, image_size=pp["size"])
    run.steps_per_epoch = len(train_rows) // cfg.batch_size
    run.optimizer = torch.optim.AdamW(_param_groups(run, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    cache_ok = cfg.freeze_text and cfg.cache_text and supports_hidden_cache(run.model)
    text_store = None
    if cache_ok and cfg.feature_cache:
        from mbm.train.features import TextStore

        text_store = TextStore(cfg.feature_cache, run.model_cfg.get("text_cfg", {}))
    run.text_cache = _TextCache(run.model, run.train_set.tokens, device, store=text_store) if cache_ok else None
    if resume_from is not None:
        _load_trainer_state(run, resume_from)
        log.info("resuming %s from step %d", cfg.out_dir, run.step)
    return run


def preprocess_of(model: Any) -> dict:
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"]
    return {"size": size[0] if isinstance(size, (tuple, list)) else int(size), "mean": pp["mean"], "std": pp["std"]}


def _param_groups(run: _Run, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on 1-d tensors (norms, biases, logit_scale) and embeddings open_clip names."""
    skip = set(run.model.no_weight_decay())
    decay, no_decay = [], []
    for prefix, module in (("", run.model), ("fusion.", run.fusion), ("classifier.", run.classifier)):
        for name, p in module.named_parameters() if module is not None else ():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or prefix + name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * base_lr * (1 + math.cos(math.pi * progress))


class _TextCache:
    """Hidden states of a frozen HF text transformer for every caption, computed once (fp16, real tokens only).

    Always computed in the same fixed batches and always read back through fp16, so
    values never depend on when a caption was first needed: resumed runs stay exact.
    """

    def __init__(self, model: Any, tokens: torch.Tensor, device: str, batch: int = 256, store: Any = None):
        """``store`` (a ``features.TextStore``): hidden states kept on disk between runs, keyed by token ids."""
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


def _encode_text(run: _Run, batch: Batch, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if run.text_cache is not None:
        hidden, mask = run.text_cache.get(batch.caption_ids)
        return hf_pool(run.model, hidden, mask), hidden, mask
    ids = batch.token_ids
    if is_hf_text(run.model):  # HF towers take any length: drop all-padding columns (CLIP's table is fixed)
        ids = trim_padding(ids, text_pad_id(run.model))
    return text_tokens(run.model, ids.to(device))


def _itm(
    run: _Run, img: torch.Tensor, txt: torch.Tensor, tokens: tuple, same: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """ITM loss over B positives + B hard-negative texts + B hard-negative images."""
    txt_tok, mask, img_tok = tokens
    with torch.no_grad():
        scale = run.model.logit_scale.exp().clamp(max=100)
        sim = (
            scale
            * torch.nn.functional.normalize(img.float(), dim=-1)
            @ torch.nn.functional.normalize(txt.float(), dim=-1).T
        )
    neg_text, neg_image = hard_negatives(sim, gen, same=same)  # mined over the whole batch
    n = min(len(sim), run.itm_rows) if run.itm_rows > 0 else len(sim)  # scored for the first n rows only
    neg_text, neg_image = neg_text[:n], neg_image[:n]
    b = torch.arange(n, device=sim.device)
    ok_t, ok_i = neg_text >= 0, neg_image >= 0
    text_index = torch.cat([b, neg_text[ok_t], b[ok_i]])
    image_index = torch.cat([b, b[ok_t], neg_image[ok_i]])
    labels = torch.cat([torch.ones(len(b)), torch.zeros(len(text_index) - len(b))]).to(sim.device)
    logits = run.fusion(txt_tok, mask, img_tok, text_index=text_index, image_index=image_index)
    return itm_loss(logits, labels)


def _losses(run: _Run, cfg: TrainConfig, batch: Batch, device: str, step: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout draws depend on the step only
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    use_itm = run.fusion is not None and cfg.w_itm > 0
    head = getattr(run.model.visual, "head", None)
    use_kd = cfg.w_kd > 0 and isinstance(head, ClassBridgeHead)
    if batch.image_tokens is not None:  # cached trunk features: only the head runs
        pooled, img_tok = batch.pixels.to(device).float(), batch.image_tokens.to(device).float()
        img = head(pooled)
    elif use_kd:
        pooled, img_tok = trunk_features(run.model, batch.pixels.to(device, non_blocking=True), grid=0)
        img = head(pooled)
    else:
        pixels = batch.pixels.to(device, non_blocking=True)
        img, img_tok = image_tokens(run.model, pixels) if use_itm else (run.model.encode_image(pixels), None)
    txt, txt_tok, mask = _encode_text(run, batch, device)
    same = batch.same().to(device)
    zero = img.sum() * 0.0
    # a zero-weight loss is not computed at all: its zero gradients would still let AdamW decay the weights it reaches
    out = {
        "contrastive": contrastive_loss(img, txt, run.model.logit_scale, same=same) if cfg.w_contrastive > 0 else zero
    }
    out["itm"] = _itm(run, img, txt, (txt_tok, mask, img_tok), same, gen) if use_itm else zero
    use_cls = run.classifier is not None and cfg.w_cls > 0
    out["cls"] = classification_loss(run.classifier(img.float()), batch.labels.to(device)) if use_cls else zero
    out["kd"] = (
        distillation_loss(img, head.teacher_logits(pooled), head.class_emb, run.model.logit_scale, cfg.kd_temperature)
        if use_kd
        else zero
    )
    out["total"] = (
        cfg.w_contrastive * out["contrastive"] + cfg.w_itm * out["itm"] + cfg.w_cls * out["cls"] + cfg.w_kd * out["kd"]
    )
    return out


def _set_train_mode(run: _Run, cfg: TrainConfig, training: bool) -> None:
    for module in (run.model, run.fusion, run.classifier):
        if module is not None:
            module.train(training)
    if training and cfg.freeze_text:  # a frozen tower must not apply dropout
        (run.model.text if hasattr(run.model, "text") else run.model.transformer).eval()
    if training and (cfg.freeze_image or cfg.image_trainable_blocks):  # BatchNorm keeps its ImageNet statistics
        run.model.visual.eval()


def _train_step(run: _Run, cfg: TrainConfig, batch: Batch, device: str, autocast: bool) -> dict[str, float]:
    lr = lr_at(run.step, cfg.lr, cfg.warmup_steps, run.steps_per_epoch * cfg.epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = _losses(run, cfg, batch, device, run.step)
    run.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    if cfg.grad_clip > 0:
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.optimizer.step()
    clamp_logit_scale_(run.model.logit_scale)
    run.step += 1
    return {**{k: float(v.detach()) for k, v in losses.items()}, "lr": lr}


def _validate(run: _Run, cfg: TrainConfig, device: str) -> dict[str, Any]:
    _set_train_mode(run, cfg, False)
    with torch.no_grad():
        top = cfg.val_rerank_top if run.fusion is not None else 0
        if run.val_cache is not None:
            from mbm.train.features import validate_cached

            metrics = validate_cached(run, device)
            _set_train_mode(run, cfg, True)
            return metrics
        data = embed_rows(
            run.model, run.preprocess_val, run.tokenizer, run.val_rows, device=device, with_tokens=top > 0
        )
        metrics = recall_at_k(data["image_emb"], data["text_emb"], data["text_to_image"])
        if top > 0:
            from mbm.train.evaluate import candidate_logits, rerank_recall, top_candidates

            cands = top_candidates(data["image_emb"], data["text_emb"], top)
            dual = candidate_logits(data["image_emb"], data["text_emb"], cands, run.model)
            metrics.update(
                rerank_recall(
                    run.fusion,
                    data["text_tokens"],
                    data["text_mask"],
                    data["image_tokens"],
                    cands,
                    data["text_to_image"],
                    dual_logits=dual,
                )
            )
            metrics["rerank_mean"] = sum(metrics[f"rerank_t2i_R@{k}"] for k in (1, 5, 10)) / 3
    _set_train_mode(run, cfg, True)
    return metrics


def _save(run: _Run, cfg: TrainConfig, folder: Path, extra: dict, *, with_state: bool = True) -> None:
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
    frozen_hf = cfg.freeze_text and is_hf_text(run.model)
    save_checkpoint(
        run.model,
        folder,
        run.model_cfg,
        exclude_frozen_text=frozen_hf,
        heads=(run.fusion, run.classifier),
        extra=extra,
        files=files,
    )


def _load_trainer_state(run: _Run, folder: Path) -> None:
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


class _Metrics:
    """Appends JSON lines to metrics.jsonl and hands the same dicts to the progress callback."""

    def __init__(self, path: Path, progress: Callable[[dict], None] | None):
        self.path, self.progress = path, progress

    def __call__(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.progress is not None:
            self.progress(record)


def train(config: TrainConfig, progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training; returns the final metrics. ``progress`` receives each logged dict."""
    started = time.perf_counter()
    config = _resolve_freeze_text(config)
    device, autocast = _device_and_precision(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _setup(config, device)
    emit = _Metrics(out / "metrics.jsonl", progress)
    info = {
        "config": asdict(config),
        "model_cfg": run.model_cfg,
        "train": describe(run.train_set.rows),
        "val_pairs": len(run.val_rows),
    }
    (out / "config.json").write_text(json.dumps(info, indent=2))
    total = run.steps_per_epoch * config.epochs
    stop = min(total, config.max_steps) if config.max_steps is not None else total
    _set_train_mode(run, config, True)
    result: dict[str, Any] = {"out_dir": str(out)}
    while run.step < stop:
        epoch, start = divmod(run.step, run.steps_per_epoch)
        result.update(_run_epoch(run, config, device, autocast, epoch, start, stop, emit))
    if run.step % run.steps_per_epoch:  # stopped inside an epoch: the epoch end did not save
        _save(run, config, out / "last", {"step": run.step})
    result.update(step=run.step, best_mean_recall=run.best, seconds=time.perf_counter() - started)
    return result


def _run_epoch(
    run: _Run, cfg: TrainConfig, device: str, autocast: bool, epoch: int, start: int, stop: int, emit: _Metrics
) -> dict:
    run.train_set.set_epoch(epoch)
    sampler = EpochBatches(len(run.train_set), cfg.batch_size, cfg.seed, epoch, start)
    if cfg.feature_cache:
        from mbm.train.features import collate_cached as collate_fn
    else:
        collate_fn = collate
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers
    )
    sums: dict[str, float] = {}
    t_epoch = t_log = time.perf_counter()
    n_steps = n_log = 0
    for batch in loader:
        losses = _train_step(run, cfg, batch, device, autocast)
        n_steps, n_log = n_steps + 1, n_log + 1
        sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
        if run.step % max(1, cfg.log_every) == 0 or run.step == stop:
            now = time.perf_counter()
            emit(
                {
                    "event": "step",
                    "step": run.step,
                    "epoch": epoch,
                    **losses,
                    "pairs_per_s": n_log * cfg.batch_size / (now - t_log),
                }
            )
            t_log, n_log = now, 0
        if run.step >= stop:
            break
    record: dict[str, Any] = {
        "event": "epoch",
        "step": run.step,
        "epoch": epoch,
        "complete": run.step % run.steps_per_epoch == 0,
    }
    record.update({k: v / max(1, n_steps) for k, v in sums.items()})
    record["pairs_per_s"] = n_steps * cfg.batch_size / (time.perf_counter() - t_epoch)
    if record["complete"]:
        if cfg.val_every and run.val_rows and (epoch + 1) % cfg.val_every == 0:
            record["val"] = _validate(run, cfg, device)
            if record["val"][cfg.select_on] > run.best:
                run.best = record["val"][cfg.select_on]
                _save(
                    run,
                    cfg,
                    Path(cfg.out_dir) / "best",
                    {"step": run.step, "epoch": epoch, "val": record["val"]},
                    with_state=False,
                )
        _save(run, cfg, Path(cfg.out_dir) / "last", {"step": run.step, "epoch": epoch})
    record["seconds"] = time.perf_counter() - t_epoch
    emit(record)
    return {
        "epoch": epoch,
        "train": {k: record[k] for k in sums},
        **({"val": record["val"]} if "val" in record else {}),
    }
