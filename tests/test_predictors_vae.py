"""VAEs: reconstruction beats the mean, anomalies score high, generated windows match moments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.errors import ConfigError, DataError
from predictors import (
    ConditionalMarketVAE,
    HierarchicalMarketVAE,
    MarketVAE,
    WalkForwardProvider,
    load_predictor,
)
from predictors.vae import regime_windows, window_moments

W = 16
REPO = Path(__file__).resolve().parents[1]
FAST = {"window": W, "max_epochs": 25, "lr": 1e-2, "batch_size": 256, "patience": 5}


def two_regime_series(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns with two regimes of 200-400 bars: calm (mean 0.5, sd 0.5, AR 0.6) and wild
    (mean -0.5, sd 2, AR -0.3); stationary AR(1) within each regime."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    t, k = 0, 0
    while t < n:
        length = int(rng.integers(200, 400))
        labels[t : t + length] = k
        k, t = 1 - k, t + length
    params = {0: (0.5, 0.5, 0.6), 1: (-0.5, 2.0, -0.3)}
    r = np.zeros(n)
    for t in range(1, n):
        mu, sd, phi = params[labels[t]]
        r[t] = mu + phi * (r[t - 1] - mu) + sd * np.sqrt(1 - phi**2) * rng.normal()
    return r, labels


@pytest.fixture(scope="module")
def series():
    return two_regime_series(10_000)


@pytest.fixture(scope="module")
def cvae(series):
    r, labels = series
    model = ConditionalMarketVAE(latent_dim=8, regime_names=("calm", "wild"), **FAST)
    model.fit((r[:7000, None], labels[:7000, None].astype(float)))
    return model


def test_generated_windows_match_each_regime(cvae, series):
    r, labels = series
    # Tolerances are fractions of what separates the regimes (means 1.0 apart, sds 4x apart,
    # lag-1 autocorrelations 0.9 apart), so a generator that ignored the condition or collapsed
    # to the pooled distribution fails. A diagonal-Gaussian decoder carries autocorrelation only
    # through the latent (8 of 16 dims): the best linear model (probabilistic PCA) reaches lag-1
    # autocorrelations 0.59 / -0.29, and an amortised VAE trained for seconds gets less of it.
    for k, other in ((0, 1), (1, 0)):
        seen = window_moments(regime_windows(r[:7000], labels[:7000], W, k))
        away = window_moments(regime_windows(r[:7000], labels[:7000], W, other))
        gen = window_moments(cvae.generate(k, 4000, seed=k))
        assert abs(gen["mean"] - seen["mean"]) < 0.15 * seen["std"], (k, gen, seen)
        assert abs(gen["std"] / seen["std"] - 1.0) < 0.25, (k, gen, seen)
        assert abs(gen["acf1"] - seen["acf1"]) < 0.25, (k, gen, seen)
        assert np.sign(gen["acf1"]) == np.sign(seen["acf1"])
        for key in ("mean", "std", "acf1"):
            assert abs(gen[key] - seen[key]) < abs(gen[key] - away[key]), (k, key, gen, seen)


def test_generate_is_seeded_and_in_data_units(cvae):
    a = cvae.generate("wild", 5, seed=3)
    np.testing.assert_array_equal(a, cvae.generate(1, 5, seed=3))
    assert a.shape == (5, W, 1)
    with pytest.raises(DataError, match="unknown regime 'nope'"):
        cvae.generate("nope", 1)


def test_cvae_block_posterior_recognises_the_regime(cvae, series):
    r, labels = series
    rows = np.arange(7000 + W, len(r))
    block = cvae.predict_block(r[:, None], rows)
    assert cvae.block_columns()[-3:] == ["anomaly", "p_calm", "p_wild"]
    np.testing.assert_allclose(block[:, -2:].sum(axis=1), 1.0, atol=1e-5)
    accuracy = np.mean(block[:, -2:].argmax(axis=1) == labels[rows])
    assert accuracy > 0.9, accuracy  # majority baseline is about 0.5


@pytest.mark.parametrize("cls", [MarketVAE, HierarchicalMarketVAE])
def test_vae_reconstructs_better_than_the_mean_and_flags_anomalies(cls, series, tmp_path):
    r = series[0]
    model = cls(latent_dim=4, **FAST)
    metrics = model.fit((r[:7000, None], None))
    # One training-curve point per epoch (scripts/train_predictor.py logs them to TensorBoard).
    assert [h["epoch"] for h in model.history] == list(range(1, int(metrics["epochs"]) + 1))
    assert min(h["val_loss"] for h in model.history) == metrics["val_loss"]
    test = np.lib.stride_tricks.sliding_window_view(r[7000:], W)[:, :, None]
    recon = model.reconstruct(test)
    mse = np.mean((recon - test) ** 2)
    baseline = np.mean((test - r[:7000].mean()) ** 2)  # the training mean for every bar
    assert mse < 0.8 * baseline, (mse, baseline)
    # A 10-sd spike in the newest bar is far outside anything seen: it must score higher than
    # almost every normal window.
    spiked = test[:500].copy()
    spiked[:, -1, 0] += 10 * r[:7000].std()
    normal = model.predict(test).score
    assert np.mean(model.predict(spiked).score > np.quantile(normal, 0.95)) > 0.9
    # save/load reproduces the block exactly, metadata names the columns.
    model.save(tmp_path / "v")
    loaded = load_predictor(tmp_path / "v", device="cpu")
    rows = np.arange(7000, 7400)
    np.testing.assert_array_equal(
        model.predict_block(r[:, None], rows), loaded.predict_block(r[:, None], rows)
    )
    assert loaded.block_columns()[0] == "latent_0" and loaded.block_columns()[-1] == "anomaly"
    if cls is HierarchicalMarketVAE:
        local = model.local_latents(test[:3])
        assert local.shape == (3, W // 4, 2)
        np.testing.assert_allclose(
            model.predict_block(r[:, None], [7000 + W - 1 + 2])[0, 4:6], local[2, -1], rtol=1e-5
        )


def test_vae_provider_has_no_lookahead(series):
    r = series[0][:3000, None]
    model = MarketVAE(latent_dim=2, **{**FAST, "max_epochs": 3})
    t = 2500
    changed = r.copy()
    changed[t + 1 :] *= -3.0
    a = WalkForwardProvider(model, refit_folds=1, update_every=8).blocks(r, r, fit_range=(0, 2000))
    model2 = MarketVAE(latent_dim=2, **{**FAST, "max_epochs": 3})
    b = WalkForwardProvider(model2, refit_folds=1, update_every=8).blocks(
        changed, changed, fit_range=(0, 2000)
    )
    for name in a:
        np.testing.assert_array_equal(a[name][: t + 1], b[name][: t + 1])
    assert not np.array_equal(a["pred_vae_anomaly"][t + 1 :], b["pred_vae_anomaly"][t + 1 :])


def test_metadata_readable_without_torch(cvae, tmp_path):
    cvae.save(tmp_path / "c")
    code = (
        "import sys, json; from predictors.metadata import read_metadata; "
        f"m = read_metadata({str(tmp_path / 'c')!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "print(m['kind'], m['state']['classes'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "cvae"


def test_config_and_label_errors(series):
    with pytest.raises(ConfigError, match="'window'"):
        HierarchicalMarketVAE(window=10, chunk=4)
    with pytest.raises(ConfigError, match="'latent_dim'"):
        MarketVAE(latent_dim=0)
    r, labels = series
    bad = labels[:2000, None].astype(float)
    bad[1500] = 0.5
    with pytest.raises(DataError, match="row 1500"):
        ConditionalMarketVAE(**FAST).fit((r[:2000, None], bad))
