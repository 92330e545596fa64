"""The evaluation suite: source filters, cross-style pairing, zero-shot and the whole report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import PairFusion
from test_train import make_manifest, tiny_config

from mbm.train.data import load_rows, source_selected
from mbm.train.loop import train
from mbm.train.recall import recall_at_k
from mbm.train.suite import _subset, cross_style, evaluate_suite, zero_shot
from mbm.train.suite_table import summary_table


def test_source_filter_keeps_or_drops():
    assert source_selected("emoji", []) and source_selected("emoji", ["emoji", "symbola"])
    assert not source_selected("tuxpaint", ["emoji"])
    assert not source_selected("symbola", ["-symbola"]) and source_selected("emoji", ["-symbola"])


def test_subset_equals_recall_on_the_subset_alone():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(10, 8)).astype(np.float32)
    txt = rng.normal(size=(15, 8)).astype(np.float32)
    t2i = np.array([i % 10 for i in range(15)])
    data = {"image_emb": img, "text_emb": txt, "text_to_image": t2i}
    keep = [1, 4, 7]
    sub = _subset(data, keep)
    captions = [t for t in range(15) if t2i[t] in keep]
    assert np.array_equal(sub["text_emb"], txt[captions])
    assert [keep[i] for i in sub["text_to_image"]] == [int(t2i[t]) for t in captions]
    assert recall_at_k(sub["image_emb"], sub["text_emb"], sub["text_to_image"]) == recall_at_k(
        img[keep], txt[captions], np.array([keep.index(int(t2i[t])) for t in captions])
    )


def test_cross_style_pairs_by_group_and_searches_the_other_style():
    rows = [
        {"source": "emoji", "group": "g1"},
        {"source": "emoji", "group": "g2"},
        {"source": "emoji", "group": "g3"},
        {"source": "symbola", "group": "g2"},
        {"source": "symbola", "group": "g1"},
        {"source": "symbola", "group": "g9"},
        {"source": "openclipart", "group": "g1"},
    ]
    e = np.eye(7, dtype=np.float32)
    emb = np.stack(
        [e[0], e[1], e[2], e[1] * 0.2 + e[5], e[0], e[6], e[0]]
    )  # g1 twins identical; g2's twin is nearer g9
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = cross_style(rows, emb)
    assert out["pairs"] == 2 and out["emoji->symbola_gallery"] == 3 and out["symbola->emoji_gallery"] == 3
    # emoji g1 finds symbola g1 first; emoji g2 scores 0.196 with its twin, 0 with the others: also first
    assert out["emoji->symbola_R@1"] == 1.0
    # symbola g1 -> emoji g1 first; symbola g2 -> emoji g2 first (0.196 > 0)
    assert out["symbola->emoji_R@1"] == 1.0
    emb[3] = -e[1]  # symbola g2 now opposes its twin: emoji g2 ranks it last of 3
    out = cross_style(rows, emb)
    assert out["emoji->symbola_R@1"] == 0.5 and out["emoji->symbola_R@5"] == 1.0
    assert cross_style([{"source": "emoji", "group": "x"}], emb[:1]) == {}


class _TwoClassModel(torch.nn.Module):
    """encode_text maps a prompt to e0 when it mentions 'boot', else e1."""

    def encode_text(self, ids):
        return torch.stack([torch.tensor([1.0, 0.0]) if int(i[0]) == 1 else torch.tensor([0.0, 1.0]) for i in ids])


def test_zero_shot_hand_made_case():
    tokenizer = lambda texts: torch.tensor([[1 if "boot" in t else 2] for t in texts])  # noqa: E731
    rows = [{"label": "Boot"}, {"label": "Shirt"}, {"label": "Shirt"}, {"label": None}]
    img = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    out = zero_shot(_TwoClassModel(), tokenizer, rows, img, "cpu")
    assert out["n"] == 3 and out["classes"] == 2 and out["top1"] == pytest.approx(2 / 3) and out["chance"] == 0.5


def test_suite_reports_every_section_on_a_small_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a developer's cache/mbm-eval must not join this test
    manifest = make_manifest(tmp_path / "data", n_train=16, n_val=8)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    # turn the val rows into a test split with two styles of the same groups, a held-out source and a labelled source
    for i, r in enumerate(rows[16:]):
        r.update(split="test", source=("emoji", "symbola")[i % 2], group=f"pair{i // 2}")
    rows += [{**r, "split": "heldout", "source": "tuxpaint", "group": f"h{i}"} for i, r in enumerate(rows[:6])]
    rows += [{**r, "split": "test", "source": "fashion-mnist", "group": f"f{i}"} for i, r in enumerate(rows[:9])]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_rows(manifest, "test", ["-fashion-mnist"])) == 8
    train(tiny_config(manifest, tmp_path / "run", epochs=1, val_every=0))
    report = evaluate_suite(tmp_path / "run" / "last", manifest, rerank_top=3)
    assert json.loads(json.dumps(report)) == report
    assert report["test"]["n_images"] == 8 and report["test:emoji"]["n_images"] == 4
    assert "rerank_t2i_R@1" in report["test"] and report["cross_style"]["pairs"] == 4
    assert report["heldout"]["n_images"] == 6 and report["heldout"]["source"] == "tuxpaint"
    section = report["zero_shot_fashion_mnist"]
    assert section["n"] == 9 and section["classes"] == 3 and 0 <= section["top1"] <= 1 and "classifier_top1" in section
    names = [name for name, _ in summary_table(report)]
    assert any(n.startswith("cross_style") for n in names) and any(n.startswith("heldout") for n in names)


def test_eval_command_runs_the_suite(tmp_path):
    from typer.testing import CliRunner

    from mbm.cli import app

    manifest = make_manifest(tmp_path / "data", n_train=16, n_val=8)
    train(tiny_config(manifest, tmp_path / "run", epochs=1, val_every=0))
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path / "run" / "last"), str(manifest), "--split", "val", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_images"] == 8
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path / "run" / "last"), str(manifest), "--split", "val", "--sources", "nope"]
    )
    assert result.exit_code != 0 and "no image-caption rows from nope" in str(result.exception)


class _OracleFusion(PairFusion):
    """Logit 5 for a text's true image (text row i <-> image row i // 2), -5 otherwise, via a feature lookup."""

    def pair_logits(self, text_tokens, image_tokens):
        return torch.where(text_tokens[:, 0, 0] == image_tokens[:, 0, 0], 5.0, -5.0)


def test_rerank_recall_fusion_alone_and_combined_with_dual_logits():
    from mbm.train.rerank_metrics import rerank_recall

    t2i = np.array([0, 0, 1, 1, 2, 2])
    candidates = np.array([[1, 0, 2], [1, 2, 0], [0, 1, 2], [1, 0, 2], [2, 1, 0], [0, 1, 2]])  # dual order: R@1 = 2/6
    text_tokens = torch.tensor(t2i, dtype=torch.float32)[:, None, None].expand(6, 2, 1).contiguous()
    image_tokens = torch.arange(3, dtype=torch.float32)[:, None, None].expand(3, 2, 1).contiguous()
    mask = torch.ones(6, 2, dtype=torch.bool)
    dual = np.tile(np.array([3.0, 2.0, 1.0]), (6, 1))  # the dual encoder's own order
    out = rerank_recall(_OracleFusion(), text_tokens, mask, image_tokens, candidates, t2i, dual_logits=dual)
    assert out["rerank_t2i_R@1"] == 1.0 and out["rerank_top"] == 3
    assert out["rerank_combined_t2i_R@1"] == 1.0  # +-5 outweighs dual gaps of 1-2
    out = rerank_recall(_OracleFusion(), text_tokens, mask, image_tokens, candidates, t2i, dual_logits=dual * 10)
    assert out["rerank_combined_t2i_R@1"] == pytest.approx(2 / 6)  # dual gaps of 10-20 win: the original order
    fusion = _OracleFusion()
    fusion.cfg = SimpleNamespace(dual_weight=0.1)  # a calibrated head that trusts itself more
    out = rerank_recall(fusion, text_tokens, mask, image_tokens, candidates, t2i, dual_logits=dual * 10)
    assert out["rerank_combined_t2i_R@1"] == 1.0


def test_rerank_sweep_both_directions_and_every_n():
    from mbm.train.rerank_metrics import rerank_sweep

    rng = np.random.default_rng(0)
    t2i = np.repeat(np.arange(6), 2)  # two captions per image
    image_emb = rng.normal(size=(6, 8)).astype(np.float32)
    text_emb = rng.normal(size=(12, 8)).astype(np.float32)  # unrelated: the dual encoder is near chance
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    data = {
        "image_emb": image_emb,
        "text_emb": text_emb,
        "text_to_image": t2i,
        "text_tokens": torch.tensor(t2i, dtype=torch.float32)[:, None, None].expand(12, 2, 1).contiguous(),
        "text_mask": torch.ones(12, 2, dtype=torch.bool),
        "image_tokens": torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 2, 1).contiguous(),
    }
    model = SimpleNamespace(logit_scale=torch.tensor(0.0))  # scale 1: the oracle's +-5 decides
    out = rerank_sweep(_OracleFusion(), model, data, [2, 12])
    full = out["12"]  # every candidate (all 6 images, all 12 captions): the oracle puts every pair first, both ways
    assert full["rerank_t2i_R@1"] == 1.0 and full["rerank_i2t_R@1"] == 1.0
    assert full["rerank_combined_t2i_R@1"] == 1.0 and full["rerank_combined_i2t_R@1"] == 1.0
    # over the top 2 only, a pair outside the dual encoder's top 2 cannot be found
    cands = np.argsort(-(text_emb @ image_emb.T), axis=1, kind="stable")[:, :2]
    assert out["2"]["rerank_t2i_R@1"] == pytest.approx(np.mean([t2i[i] in cands[i] for i in range(12)]))


def test_rerank_sweep_with_a_hubness_calibration_and_concept_groups():
    from mbm.retrieval.hubness import RerankCalibration
    from mbm.train.rerank_metrics import rerank_sweep

    # image 0 is a hub: every caption is closest to it; each caption's own picture comes second
    image_emb = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 0.0, 0.8], [0.6, -0.8, 0.0]], np.float32)
    text_emb = np.array([[0.9, 0.436, 0.0], [0.9, 0.0, 0.436], [0.9, -0.436, 0.0]], np.float32)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    t2i = np.array([1, 2, 3])
    data = {
        "image_emb": image_emb,
        "text_emb": text_emb,
        "text_to_image": t2i,
        "text_tokens": torch.tensor(t2i, dtype=torch.float32)[:, None, None].expand(3, 2, 1).contiguous(),
        "text_mask": torch.ones(3, 2, dtype=torch.bool),
        "image_tokens": torch.arange(4, dtype=torch.float32)[:, None, None].expand(4, 2, 1).contiguous(),
        "groups": ["hub", "a", "b", "a"],  # pictures 1 and 3 draw one concept
    }
    model = SimpleNamespace(logit_scale=torch.tensor(0.0))
    bank = np.array([[1.0, 0.0, 0.0]], np.float32)  # typical queries sit on the hub
    cal = RerankCalibration(bank, beta=10.0, hub_weight=1.0, fusion_weight=0.0)
    out = rerank_sweep(_OracleFusion(), model, data, [4], calibration=cal)
    row = out["4"]
    assert out["calibration"] == {"beta": 10.0, "hub_weight": 1.0, "fusion_weight": 0.0, "bank": 1}
    assert row["rerank_hub_t2i_R@1"] == 1.0  # the hub's cosine to the bank (1.0) comes off: each own picture first
    assert row["rerank_combined_t2i_R@1"] == 1.0  # fusion weight 0: the corrected dual order itself
    # the dual order puts the hub first for every caption; by concept, caption 2 ("a", picture 3) is no better
    assert row["dual_concept_t2i_R@1"] == 0.0 and row["rerank_hub_concept_t2i_R@1"] == 1.0
    # i2t combines with the fusion weight but no hubness correction (the bank holds text queries)
    assert "rerank_combined_i2t_R@1" in row and "rerank_hub_i2t_R@1" not in row


def test_suite_reports_photos_with_intervals_and_style_shift_per_style(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no cache/mbm-eval here: the default look-up finds nothing
    manifest = make_manifest(tmp_path / "data", n_train=16, n_val=8)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    for i, r in enumerate(rows[16:]):
        r.update(split="test", source="emoji", style=("noto", "twemoji")[i % 2])
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    photos = tmp_path / "data" / "photos.jsonl"
    photos.write_text(
        "".join(json.dumps({**r, "split": "photos", "group": f"photo:{i}"}) + "\n" for i, r in enumerate(rows[:6]))
    )
    icons = tmp_path / "data" / "extra" / "icon-themes.jsonl"
    icons.parent.mkdir()
    icons.write_text(
        "".join(
            json.dumps(
                {
                    **r,
                    "image": "../" + r["image"],
                    "split": "style-shift",
                    "style": ("a", "b")[i % 2],
                    "group": f"icon:{i // 2}",
                }
            )
            + "\n"
            for i, r in enumerate(rows[:8])
        )
    )
    train(tiny_config(manifest, tmp_path / "run", epochs=1, val_every=0))
    report = evaluate_suite(tmp_path / "run" / "last", manifest, rerank_top=0, style_shift=icons)
    assert json.loads(json.dumps(report)) == report and report["precision"] == "fp32"
    assert report["test:style=noto"]["n_images"] == 4 and report["test:style=twemoji"]["n_images"] == 4
    section = report["photos"]  # found next to the manifest
    assert section["photos"] == 6 and section["n_images"] == 6
    for key in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5"):
        lo, hi = section["ci95"][key]
        assert 0 <= lo <= section[key] <= hi <= 1
    shift = report["style_shift"]
    assert set(shift["styles"]) == {"a", "b"} and shift["styles"]["a"]["n_images"] == 4 and shift["concepts"] == 4
    assert shift["styles"]["a"]["chance"]["t2i_R@1"] == 0.25 and "notes" not in report
    names = [name for name, _ in summary_table(report)]
    assert names[0] == "model" and any(n.startswith("photos (") for n in names)
    assert any(n.startswith("style-shift:a ") for n in names) and any(n.startswith("test:style=noto") for n in names)
    bare = evaluate_suite(tmp_path / "run" / "last", manifest, rerank_top=0, photos=False)
    assert "photos" not in bare and "style_shift" not in bare
    assert any("icon-themes.jsonl" in note and "python -m mbm.train.evalsets" in note for note in bare["notes"])


def test_eval_command_reports_its_precision(tmp_path):
    from typer.testing import CliRunner

    from mbm.cli import app

    manifest = make_manifest(tmp_path / "data", n_train=16, n_val=8)
    train(tiny_config(manifest, tmp_path / "run", epochs=1, val_every=0))
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path / "run" / "last"), str(manifest), "--split", "val", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["precision"] == "fp32"
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path / "run" / "last"), str(manifest), "--split", "val", "--precision", "bf16", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["precision"] == "bf16"
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path / "run" / "last"), str(manifest), "--split", "val", "--photos", "x.jsonl"]
    )
    assert result.exit_code != 0 and "belong to the suite" in str(result.exception)


def test_group_aware_recall_does_not_count_another_drawing_of_the_concept_as_a_miss():
    img = np.eye(3, dtype=np.float32)  # images 0 and 1: two drawings of concept "a"; image 2: concept "b"
    txt = np.array([[1.0, 0.2, 0.0], [0.0, 0.3, 1.0], [0.1, 0.0, 1.0]], np.float32)
    t2i = np.array(
        [1, 2, 0]
    )  # caption 0 is image 1's but looks like image 0; caption 2 is image 0's but looks like "b"
    plain = recall_at_k(img, txt, t2i, ks=(1, 2))
    grouped = recall_at_k(img, txt, t2i, ks=(1, 2), image_groups=["a", "a", "b"])
    assert plain["t2i_R@1"] == pytest.approx(1 / 3)  # only caption 1 ranks its own image first
    assert grouped["t2i_R@1"] == pytest.approx(2 / 3)  # caption 0's rival is its own concept now
    # image 0's own caption 2 (.1) is beaten by caption 0 (1.0), a caption of the other drawing of "a": no rival grouped;
    # image 1's caption 0 (.2) loses to caption 1 (.3, concept "b") either way; image 2 ties caption 2 but wins by index
    assert plain["i2t_R@1"] == pytest.approx(1 / 3) and grouped["i2t_R@1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recall_at_k(img, txt, t2i, image_groups=["a", "b"])
