"""The online step's fast paths (issue 6) give the same bits as the general code they shortcut.

Each test pins one shortcut to its reference: the one-sample monitor update, the anchor gather,
the step-batch buffers, the one-sample replay push, the direct LSTM call and the flat gradient
gather of ``FlatAdam``; the last test runs whole online steps of a gas predictor (price weights,
anchors) bar by bar and in chunks, against a copy that takes the general paths.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from predictors import GasPricePredictor, LiquidityPredictor
from predictors.nets import RecurrentGaussianNet, _run_rnn
from predictors.online_optim import FlatAdam
from predictors.replay import ReplayBuffer
from predictors.toy_series import gas_like, pool_like

TINY = {"window": 12, "hidden_size": 8, "max_epochs": 2, "batch_size": 64, "online_bptt": 4}


@pytest.fixture(scope="module")
def gas_model() -> tuple[GasPricePredictor, np.ndarray, np.ndarray]:
    fee, ts = gas_like(700, seed=3)
    model = GasPricePredictor(horizons=(1, 3), **TINY)
    series = model.prepare(fee, ts)
    model.fit((series.features[:500], series.targets[:500]), feature_names=series.feature_names)
    return model, series.features, series.targets


def _stats_key(model) -> tuple:
    s = model.stats()
    return (s.loss_mean, s.mse_mean, s.coverage_90, s.samples_seen, s.degraded, model._covered)


def test_one_sample_score_equals_the_general_score(gas_model):
    model, _, _ = gas_model
    rng = np.random.default_rng(0)
    fast, ref = copy.deepcopy(model), copy.deepcopy(model)
    for step in range(40):
        n_out = fast.n_outputs
        mean = rng.normal(size=(1, n_out)).astype(np.float32)
        var = rng.uniform(0.05, 3.0, size=(1, n_out)).astype(np.float32)
        y = (mean + rng.normal(size=(1, n_out)) * (3.0 if step % 7 == 0 else 1.0)).astype(
            np.float32
        )
        fast._score(mean, var, y)  # the first call starts the averages (general path)
        ref._score_samples(mean, var, y)
        assert _stats_key(fast) == _stats_key(ref)


def test_anchor_gather_equals_stacked_and_tiled_columns(gas_model):
    model, feats, _ = gas_model
    last = feats[100:105]
    for index in ([0, 6], [None, 6], [3, None], [None, None]):
        twin = copy.deepcopy(model)
        twin._anchor_index = index
        cols = [last[:, j] if j is not None else np.zeros(len(last)) for j in index]
        want = np.tile(np.stack(cols, axis=1), (1, len(twin.config.horizons)))
        got = twin._anchor(last)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert np.array_equal(np.signbit(got), np.signbit(want))


def test_step_batch_buffers_equal_concatenated_batches(gas_model):
    model, feats, targs = gas_model
    twin = copy.deepcopy(model)
    rng_state = copy.deepcopy(twin._online_rng)
    x = twin.feature_scaler.transform(twin.samples(feats, targs, np.arange(520, 523)).windows)
    y = np.random.default_rng(1).normal(size=(3, twin.n_outputs)).astype(np.float32)
    w = np.random.default_rng(2).uniform(0.5, 2, size=3).astype(np.float32)
    xb, yb, wb = twin._step_batch(x, y, w)
    idx = twin.replay.sample_indices(twin.config.replay_batch, rng_state)
    for got, new, src in (
        (xb, x, twin.replay.windows),
        (yb, y, twin.replay.targets),
        (wb, w, twin.replay.weights),
    ):
        want = torch.cat([torch.as_tensor(new), src.index_select(0, idx)])
        assert got.dtype == want.dtype and torch.equal(got, want)
    # Other dtypes take the concatenating path (which promotes, as before).
    _, _, w64 = twin._step_batch(x, y, w.astype(np.float64))
    assert w64.dtype == torch.float64


def test_one_sample_push_equals_a_batch_push():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 3, 2)).astype(np.float32)
    y = rng.normal(size=(9, 2)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, size=9).astype(np.float32)
    one, batch = ReplayBuffer(5, 3, 2, 2), ReplayBuffer(5, 3, 2, 2)
    for i in range(9):  # wraps around the ring of 5
        one.push(x[i : i + 1], y[i : i + 1], w[i : i + 1])
    batch.push(x[:4], y[:4], w[:4])
    batch.push(x[4:], y[4:], w[4:])
    a, b = one.state_dict(), batch.state_dict()
    assert (a["size"], a["pos"]) == (b["size"], b["pos"]) == (5, 4)
    for key in ("windows", "targets", "weights"):
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("with_state", [False, True])
def test_direct_lstm_call_equals_the_module(with_state):
    torch.manual_seed(0)
    rnn = nn.LSTM(4, 6, batch_first=True)
    x = torch.randn(5, 7, 4, requires_grad=True)
    state = (torch.randn(1, 5, 6), torch.randn(1, 5, 6)) if with_state else None
    results = []
    for call in (rnn, lambda h, s: _run_rnn(rnn, h, s)):
        rnn.zero_grad()
        x.grad = None
        out, (h_n, c_n) = call(x, state)
        (out.square().sum() + h_n.sum() + 2 * c_n.sum()).backward()
        results.append([out, h_n, c_n, x.grad, *(p.grad for p in rnn.parameters())])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    # Modules the shortcut does not cover go through their forward.
    gru = nn.GRU(4, 6, batch_first=True)
    assert torch.equal(_run_rnn(gru, x, None)[0], gru(x)[0])


def test_flat_gradient_gather_equals_concatenation():
    torch.manual_seed(2)
    net = RecurrentGaussianNet(3, 2, hidden_size=6)
    twin = copy.deepcopy(net)
    fast = FlatAdam(net.parameters(), lr=1e-2, max_grad_norm=1.0)
    slow = FlatAdam(twin.parameters(), lr=1e-2, max_grad_norm=1.0)
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(net.parameters(), twin.parameters(), strict=True):
            p.grad = (10.0 if step % 2 else 1e-3) * torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        # One missing gradient sends `slow` through the concatenation (it counts as zeros).
        last = list(twin.parameters())[-1]
        list(net.parameters())[-1].grad = torch.zeros_like(last)
        last.grad = None
        assert fast.step() == slow.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(fast.exp_avg, slow.exp_avg)


@pytest.mark.parametrize("kind", ["gas", "liquidity"])
def test_online_steps_equal_the_general_path_and_survive_copies(kind, gas_model):
    if kind == "gas":
        model, feats, targs = gas_model
    else:
        model = LiquidityPredictor(horizons=(1, 2), component_weights=(1.0, 2.0, 0.5), **TINY)
        series = model.prepare(*pool_like(700, seed=5))
        feats, targs = series.features, series.targets
        model.fit((feats[:500], targs[:500]), feature_names=series.feature_names)
    fast, ref = copy.deepcopy(model), copy.deepcopy(model)

    def general_batch(x, y, w):
        # The step batch as built before the buffers: tensors and torch.cat.
        idx = ref.replay.sample_indices(ref.config.replay_batch, ref._online_rng)
        src = (ref.replay.windows, ref.replay.targets, ref.replay.weights)
        return tuple(
            torch.cat([torch.as_tensor(a), s.index_select(0, idx)])
            for a, s in zip((x, y, w), src, strict=True)
        )

    ref._step_batch = general_batch
    ref._score = ref._score_samples
    losses = {"fast": [], "ref": []}
    row = 500
    for n in [1, 1, 4, 1, 1, 1, 2, 1] * 3:
        rows = np.arange(row, row + n)
        row += n
        losses["fast"].append(fast.update(fast.samples(feats, targs, rows)))
        losses["ref"].append(ref.update(ref.samples(feats, targs, rows)))
        if n == 4:  # copies and pickles rebuild their buffers; they continue identically
            fast = pickle.loads(pickle.dumps(copy.deepcopy(fast)))
    assert losses["fast"] == losses["ref"]
    assert _stats_key(fast) == _stats_key(ref)
    rows = np.arange(550, 580)
    assert np.array_equal(fast.predict_block(feats, rows), ref.predict_block(feats, rows))
