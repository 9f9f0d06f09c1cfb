"""Transformer forecaster and BiLSTM-attention direction classifier: learning, causality, IO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.errors import ConfigError
from predictors import (
    DirectionClassifier,
    TransformerForecaster,
    WalkForwardProvider,
    load_predictor,
)
from predictors.transformer import TransformerGaussianNet

Z_90 = 1.6448536269514722
FAST = {"hidden_size": 16, "max_epochs": 12, "lr": 1e-2, "patience": 3, "n_heads": 2}


def ar1(n: int, phi: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    e = rng.normal(0.0, noise, n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


@pytest.fixture(scope="module")
def ar_transformer():
    # AR(1), phi 0.6, noise sd 0.5: optimal 1-step MSE 0.25, persistence 2 * 0.25 / 1.6 = 0.3125.
    x = ar1(7000, 0.6, 0.5, seed=11)
    model = TransformerForecaster(window=8, **FAST)
    model.fit((x[:3000, None], x[:3000, None]))
    return model, x


def test_transformer_beats_persistence_and_is_calibrated(ar_transformer):
    model, x = ar_transformer
    rows = np.arange(3000, len(x) - 1)
    block = model.predict_block(x[:, None], rows)
    mean, std, y = block[:, 0], block[:, 1], x[rows + 1]
    mse = np.mean((mean - y) ** 2)
    assert mse < 0.9 * min(np.mean((x[rows] - y) ** 2), np.mean(y**2)), mse
    assert mse < 1.1 * 0.25
    coverage = np.mean(np.abs(y - mean) <= Z_90 * std)  # ~4000 samples: sd of share ~0.5%
    assert abs(coverage - 0.90) <= 0.03, coverage


def test_transformer_is_causal_within_the_window():
    torch.manual_seed(0)
    net = TransformerGaussianNet(3, 1, dim=16, n_heads=2, num_layers=2).eval()
    x = torch.randn(2, 10, 3)
    y = x.clone()
    y[:, 6:] += torch.randn(2, 4, 3)  # change bars after position 5 of the window
    with torch.no_grad():
        a, b = net.sequence(x), net.sequence(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_transformer_save_load_exact_and_no_lookahead(ar_transformer, tmp_path):
    model, x = ar_transformer
    model.save(tmp_path / "m")
    loaded = load_predictor(tmp_path / "m", device="cpu")
    rows = np.arange(3000, 3500)
    np.testing.assert_array_equal(
        model.predict_block(x[:, None], rows), loaded.predict_block(x[:, None], rows)
    )
    # Walk-forward with online learning: changing bars after t leaves every block row <= t alone.
    feats, targs = x[:3600, None], x[:3600, None]
    t = 3300
    changed = feats.copy()
    changed[t + 1 :] += 5.0
    provider = WalkForwardProvider(loaded, refit_folds=0, update_every=16)
    a = provider.blocks(feats, targs)
    b = WalkForwardProvider(
        load_predictor(tmp_path / "m", device="cpu"), refit_folds=0, update_every=16
    ).blocks(changed, changed.copy())
    for name in a:
        np.testing.assert_array_equal(a[name][: t + 1], b[name][: t + 1])
    assert provider.report["online_updates"] > 0


def test_transformer_config_errors():
    with pytest.raises(ConfigError, match="n_heads"):
        TransformerForecaster(hidden_size=10, n_heads=4)


@pytest.fixture(scope="module")
def direction():
    # Momentum returns r_t = 0.5 r_{t-1} + e_t: the sign of the next move follows the last one.
    r = 0.01 * ar1(6000, 0.5, 1.0, seed=3)
    log_price = np.cumsum(r)
    clf = DirectionClassifier(window=8, hidden_size=16, max_epochs=10, lr=1e-2, patience=3)
    clf.fit((r[:4000, None], log_price[:4000, None]))
    return clf, r, log_price


def test_direction_classifier_beats_majority_and_persistence(direction):
    clf, r, log_price = direction
    rows = np.arange(4000, len(r) - 1)
    labels = clf.labels(log_price[:, None], rows)
    probs = clf.predict_block(r[:, None], rows)
    assert probs.shape == (len(rows), 4) and clf.block_columns()[-1] == "confidence"
    np.testing.assert_allclose(probs[:, :3].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs[:, 3], probs[:, :3].max(axis=1))
    accuracy = np.mean(probs[:, :3].argmax(axis=1) == labels)
    majority = np.bincount(labels).max() / len(labels)
    persistence = np.mean(clf.labels(log_price[:, None], rows - 1) == labels)
    assert accuracy > majority + 0.08, (accuracy, majority)
    # Repeating the last move's label is close to the Bayes rule for AR(1) momentum; the
    # classifier should match it (it learns the rule rather than being given it).
    assert accuracy > persistence - 0.03, (accuracy, persistence)


def test_direction_predict_save_load_and_update(direction, tmp_path):
    clf, r, log_price = direction
    pred = clf.predict(r[100:108, None])
    assert pred.mean.shape == (1, 3)
    np.testing.assert_allclose(pred.std, np.sqrt(pred.mean * (1 - pred.mean)), rtol=1e-6)
    clf.save(tmp_path / "d")
    loaded = load_predictor(tmp_path / "d", device="cpu")
    rows = np.arange(4000, 4300)
    np.testing.assert_array_equal(
        clf.predict_block(r[:, None], rows), loaded.predict_block(r[:, None], rows)
    )
    assert loaded.state["threshold"] == clf.state["threshold"]
    loss = loaded.update(loaded.samples(r[:, None], log_price[:, None], rows))
    assert np.isfinite(loss) and loaded.stats().updates == 1 and loaded.stats().samples_seen == 300
