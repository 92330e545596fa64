"""Hubness correction of the re-ranking order (mbm.retrieval.hubness): the bank's log-mean-exp, the file a
checkpoint carries, and the order search builds from it."""

from __future__ import annotations

import numpy as np
import pytest

from mbm.errors import ModelError
from mbm.retrieval import hubness
from mbm.retrieval.hubness import RerankCalibration
from mbm.retrieval.rerank import rerank_order


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_hub_is_the_log_mean_exp_of_the_banks_cosines_and_stays_finite():
    rng = np.random.default_rng(0)
    bank, vectors = _unit(rng.standard_normal((50, 16))), _unit(rng.standard_normal((7, 16)))
    cal = RerankCalibration(bank.astype(np.float32), beta=20.0, hub_weight=0.5, fusion_weight=0.1)
    direct = np.log(np.exp(20.0 * (vectors @ bank.T)).mean(1)) / 20.0
    np.testing.assert_allclose(cal.hub(vectors), direct, rtol=1e-5)
    np.testing.assert_allclose(cal.penalty(vectors), 0.5 * direct, rtol=1e-5)
    sharp = RerankCalibration(bank.astype(np.float32), beta=5000.0, hub_weight=1.0, fusion_weight=0.0)
    got = sharp.hub(vectors)  # exp(5000 * cos) overflows float64: the max is taken out first
    assert np.isfinite(got).all() and np.all(got <= (vectors @ bank.T).max(1) + 1e-9)
    assert len(cal.hub(np.zeros((0, 16)))) == 0
    assert not RerankCalibration(bank, 20.0, 0.0, 1.0).penalty(vectors).any()


def test_a_picture_near_every_query_of_the_bank_is_the_biggest_hub():
    rng = np.random.default_rng(1)
    centre = _unit(rng.standard_normal((1, 16)))
    bank = _unit(centre + 0.3 * rng.standard_normal((40, 16)))  # typical queries crowd around one direction
    hub_picture, loner = centre[0], _unit(-centre)[0]
    hubs = RerankCalibration(bank, 20.0, 1.0, 0.0).hub(np.stack([hub_picture, loner]))
    assert hubs[0] > hubs[1] + 0.5


def test_calibration_round_trips_through_its_file_and_a_damaged_file_names_the_fix(tmp_path):
    rng = np.random.default_rng(2)
    bank = _unit(rng.standard_normal((30, 8))).astype(np.float32)
    assert hubness.load(tmp_path) is None and hubness.load(None) is None  # no file: re-ranking uncorrected
    path = hubness.save(tmp_path, RerankCalibration(bank, 40.0, 0.5, 0.25))
    assert path.name == hubness.RERANK_FILE
    got = hubness.load(tmp_path)
    assert (got.beta, got.hub_weight, got.fusion_weight) == (40.0, 0.5, 0.25)
    np.testing.assert_allclose(got.bank, bank, atol=2e-3)  # stored as float16, read back normalized
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"cannot be read .*delete it"):
        hubness.load(tmp_path)


def test_rerank_order_takes_each_candidates_penalty_off_its_cosine():
    cosines = np.array([0.50, 0.48, 0.30])
    logits = np.array([0.0, 0.0, 9.0])
    assert list(rerank_order(logits, cosines, 10.0, 1.0, fusion_weight=0.0)) == [0, 1, 2]
    # the first candidate is a hub: 0.50 - 0.1 < 0.48 - 0.0
    penalty = np.array([0.1, 0.0, 0.0])
    assert list(rerank_order(logits, cosines, 10.0, 1.0, penalty=penalty, fusion_weight=0.0)) == [1, 0, 2]
    # the fusion logit counts with its weight: 0.1 * 9 + 10 * 0.30 = 3.9 < 10 * 0.48 = 4.8, but 1.0 * 9 + 3 > 4.8
    assert list(rerank_order(logits, cosines, 10.0, 1.0, penalty=penalty, fusion_weight=0.1)) == [1, 0, 2]
    assert list(rerank_order(logits, cosines, 10.0, 1.0, penalty=penalty, fusion_weight=1.0)) == [2, 1, 0]


def test_the_bundled_model_ships_a_calibration_outside_its_fingerprint():
    from mbm.models.checkpoints import checkpoint_files
    from mbm.models.specs import spec_folder

    folder = spec_folder("mbm-offline")
    cal = hubness.load(folder)
    assert cal is not None and cal.bank.shape[1] == 384 and 0 < cal.fusion_weight <= 0.25
    # it orders searches and changes no stored embedding: collections indexed before it stay valid
    assert folder / hubness.RERANK_FILE not in checkpoint_files(folder)
