"""Each model learns a series with known structure and its 90% intervals are calibrated.

Series are seeded; baselines are persistence (``y_t`` for ``y_{t+h}``) and the training mean. All
figures are on a held-out test split after the training (and validation) bars.
"""

from __future__ import annotations

import numpy as np
import pytest

from predictors import GasPricePredictor, LiquidityPredictor, OnlineGRU, OnlineLSTM
from predictors.toy_series import ar1, gas_like, pool_like

Z_90 = 1.6448536269514722
FAST = {"hidden_size": 16, "max_epochs": 12, "batch_size": 128, "lr": 1e-2, "patience": 3}


def test_errors(model, feats, targs, train_end, j, horizon):
    """Model, persistence and mean-baseline MSE and interval coverage of output ``j``."""
    k = j % targs.shape[1]
    rows = np.arange(train_end, len(feats) - horizon)
    block = model.predict_block(feats, rows)
    n_out = model.n_outputs
    mean, std = block[:, j], block[:, n_out + j]
    y = targs[rows + horizon, k]
    return {
        "model": float(np.mean((mean - y) ** 2)),
        "persistence": float(np.mean((targs[rows, k] - y) ** 2)),
        "mean": float(np.mean((targs[:train_end, k].mean() - y) ** 2)),
        "coverage": float(np.mean(np.abs(y - mean) <= Z_90 * std)),
        "std": float(np.mean(std)),
    }


test_errors.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def ar_lstm():
    # AR(1) with phi 0.6 and known noise 0.5: the optimal 1-step forecast is 0.6 x_t with error
    # sd 0.5, persistence has error variance 2 * 0.25 / 1.6 = 0.3125, the mean 0.25 / 0.64.
    x = ar1(9000, phi=0.6, noise=0.5, seed=11)
    feats, targs = x[:, None], x[:, None]
    model = OnlineLSTM(window=8, **FAST)
    model.fit((feats[:4000], targs[:4000]))
    return model, feats, targs


def test_lstm_beats_persistence_and_mean(ar_lstm):
    model, feats, targs = ar_lstm
    err = test_errors(model, feats, targs, 4000, 0, 1)
    assert err["model"] < 0.9 * min(err["persistence"], err["mean"]), err
    assert err["model"] < 1.1 * 0.25, err  # close to the noise floor


def test_lstm_intervals_are_calibrated(ar_lstm):
    model, feats, targs = ar_lstm
    err = test_errors(model, feats, targs, 4000, 0, 1)  # 5000 test samples: sd of share ~0.4%
    assert abs(err["coverage"] - 0.90) <= 0.03, err
    assert err["std"] == pytest.approx(0.5, rel=0.15), err


def test_gru_variant_learns():
    # AR(2) with complex roots (a damped cycle): persistence is poor, the mean is poorer.
    rng = np.random.default_rng(5)
    n = 5000
    x = np.zeros(n)
    e = rng.normal(0, 0.3, n)
    for t in range(2, n):
        x[t] = 1.2 * x[t - 1] - 0.6 * x[t - 2] + e[t]
    feats, targs = x[:, None], x[:, None]
    model = OnlineGRU(window=8, horizons=(2,), **FAST)
    model.fit((feats[:3000], targs[:3000]))
    err = test_errors(model, feats, targs, 3000, 0, 2)
    assert err["model"] < 0.8 * min(err["persistence"], err["mean"]), err


def test_gas_predictor_beats_persistence_on_level_and_volatility():
    fee, ts = gas_like(5000, seed=1)
    model = GasPricePredictor(window=16, horizons=(1, 3), **FAST)
    series = model.prepare(fee, ts)
    assert "tod_sin" in series.feature_names and "spike" in series.feature_names
    model.fit((series.features[:3500], series.targets[:3500]))
    assert model.feature_names == series.feature_names  # named automatically
    out = model.output_names
    assert out == ["log_base_fee_h1", "realised_vol_h1", "log_base_fee_h3", "realised_vol_h3"]
    level = test_errors(model, series.features, series.targets, 3500, 2, 3)
    vol = test_errors(model, series.features, series.targets, 3500, 3, 3)
    assert level["model"] < 0.9 * level["persistence"], level
    assert vol["model"] < 0.9 * min(vol["persistence"], vol["mean"]), vol


def test_gas_price_weights_favour_expensive_bars():
    fee, ts = gas_like(2000, seed=2)
    model = GasPricePredictor(window=8, max_price_weight=4.0, hidden_size=4, max_epochs=1)
    series = model.prepare(fee, ts)
    model.fit((series.features, series.targets))
    scaled = model.feature_scaler.transform(series.features)
    w = model._sample_weights(scaled)
    order = np.argsort(fee)
    assert w[order[-1]] > 1.0 > w[order[0]]
    assert np.all(np.diff(w[order]) >= -1e-6)  # monotone in the fee
    assert w.max() <= 4.0 + 1e-6 and w.min() >= 0.25 - 1e-6
    flat = GasPricePredictor(window=8, price_weight_power=0.0, hidden_size=4, max_epochs=1)
    flat.fit((series.features, series.targets))
    np.testing.assert_allclose(flat._sample_weights(scaled), 1.0)


def test_liquidity_predictor_beats_baselines_on_every_component():
    x, y, v = pool_like(5000, seed=2)
    model = LiquidityPredictor(window=16, horizons=(2,), component_weights=(1.0, 1.0, 2.0), **FAST)
    series = model.prepare(x, y, v)
    model.fit((series.features[:3500], series.targets[:3500]), feature_names=series.feature_names)
    assert model.output_names == ["log_liquidity_h2", "log_volume_h2", "impact_bps_h2"]
    np.testing.assert_allclose(model._output_weights(), [1.0, 1.0, 2.0])
    for j in range(3):
        err = test_errors(model, series.features, series.targets, 3500, j, 2)
        assert err["model"] < 0.95 * min(err["persistence"], err["mean"]), (j, err)
