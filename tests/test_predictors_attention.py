"""Attention extractors: shapes, causality inside the window, masking; attention forecaster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.errors import ConfigError
from predictors import (
    AttentionForecaster,
    CrossMarketAttention,
    HierarchicalTimeAttention,
    MultiScaleAttention,
    TemporalDecayAttention,
    WalkForwardProvider,
    load_predictor,
)
from predictors.attention import CausalSelfAttention

EXTRACTORS = [
    lambda: MultiScaleAttention(3, 16, scales=(1, 4, 8), n_heads=2),
    lambda: TemporalDecayAttention(3, 16, n_heads=2),
    lambda: TemporalDecayAttention(3, 16, n_heads=2, learn_decay=False),
    lambda: HierarchicalTimeAttention(3, 16, chunk=5, n_heads=2),  # 16 bars: padded chunk
]


@pytest.mark.parametrize("make", EXTRACTORS)
def test_extractor_shapes_and_gradients(make):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(4, 16, 3, requires_grad=True)
    out = module(x)
    assert out.shape == (4, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("make", EXTRACTORS)
def test_window_output_ignores_bars_outside_it(make):
    # Slide the extractor over a series: the output at window t depends only on its bars.
    torch.manual_seed(0)
    module = make().eval()
    series = torch.randn(40, 3)
    changed = series.clone()
    changed[30:] += 3.0
    windows = series.unfold(0, 16, 1).permute(0, 2, 1)  # (25, 16, 3), window i ends at i + 15
    windows_b = changed.unfold(0, 16, 1).permute(0, 2, 1)
    with torch.no_grad():
        a, b = module(windows), module(windows_b)
    torch.testing.assert_close(a[:15], b[:15])  # windows ending at bars <= 29
    assert not torch.allclose(a[15:], b[15:])


def test_causal_block_and_padding_mask():
    torch.manual_seed(0)
    block = CausalSelfAttention(8, 2).eval()
    x = torch.randn(2, 6, 8)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x)[:, :4], block(y)[:, :4])
        pad = torch.tensor([[True, True, False, False, False, False]] * 2)
        z = x.clone()
        z[:, :2] = 100.0  # padding content must not reach real tokens
        torch.testing.assert_close(block(x, pad)[:, 2:], block(z, pad)[:, 2:])


def test_hierarchical_padding_does_not_leak():
    torch.manual_seed(0)
    module = HierarchicalTimeAttention(2, 8, chunk=4, n_heads=2).eval()
    x = torch.randn(3, 10, 2)  # 10 bars -> 3 chunks, 2 bars of padding
    with torch.no_grad():
        out = module(x)
    assert torch.isfinite(out).all()


def test_decay_attention_prefers_recent_bars():
    module = TemporalDecayAttention(2, 8, n_heads=2, decay=1.0, learn_decay=False)
    with torch.no_grad():
        _, weights = module.attend(torch.zeros(1, 12, 2))  # equal content: decay decides
    w = weights[0, 0]
    assert torch.all(w[1:] > w[:-1]) and w[-1] > 0.5


def test_cross_market_attention_shapes_and_asset_mask():
    torch.manual_seed(0)
    module = CrossMarketAttention(3, 16, n_heads=2).eval()
    x = torch.randn(2, 10, 4, 3)
    with torch.no_grad():
        assert module(x).shape == (2, 16)
        mask = torch.tensor([[False, False, True, False], [False, True, False, False]])
        y = x.clone()
        y[0, :, 2] += 50.0  # a missing asset's data must not matter
        y[1, :, 1] -= 50.0
        torch.testing.assert_close(module(x, mask), module(y, mask))
        per_asset = CrossMarketAttention(3, 16, n_heads=2, per_asset=True)(x)
    assert per_asset.shape == (2, 4, 16)


def test_attention_forecaster_learns_saves_and_has_no_lookahead(tmp_path):
    # Damped cycle AR(2): persistence is a poor forecast, the structure is learnable.
    rng = np.random.default_rng(5)
    x = np.zeros(4000)
    e = rng.normal(0, 0.3, 4000)
    for t in range(2, 4000):
        x[t] = 1.2 * x[t - 1] - 0.6 * x[t - 2] + e[t]
    model = AttentionForecaster(
        window=8, hidden_size=16, n_heads=2, extractor="decay", max_epochs=10, lr=1e-2, patience=3
    )
    model.fit((x[:2500, None], x[:2500, None]))
    rows = np.arange(2500, 3999)
    mean = model.predict_block(x[:, None], rows)[:, 0]
    mse = np.mean((mean - x[rows + 1]) ** 2)
    assert mse < 0.8 * min(np.mean((x[rows] - x[rows + 1]) ** 2), np.var(x[rows + 1])), mse
    model.save(tmp_path / "a")
    loaded = load_predictor(tmp_path / "a", device="cpu")
    np.testing.assert_array_equal(
        model.predict_block(x[:, None], rows), loaded.predict_block(x[:, None], rows)
    )
    t = 3200
    changed = x.copy()
    changed[t + 1 :] = 0.0
    a = WalkForwardProvider(loaded, refit_folds=0, update_every=16).blocks(x[:, None], x[:, None])
    b = WalkForwardProvider(
        load_predictor(tmp_path / "a", device="cpu"), refit_folds=0, update_every=16
    ).blocks(changed[:, None], changed[:, None])
    for name in a:
        np.testing.assert_array_equal(a[name][: t + 1], b[name][: t + 1])


def test_config_errors():
    with pytest.raises(ConfigError, match="extractor"):
        AttentionForecaster(extractor="nope")
    with pytest.raises(ConfigError, match="scales"):
        AttentionForecaster(extractor="multiscale", window=8, scales=(1, 16))
    with pytest.raises(ConfigError, match="multiple of n_heads"):
        TemporalDecayAttention(3, 10, n_heads=4)
