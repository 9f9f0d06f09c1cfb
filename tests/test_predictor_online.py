"""Online step of the Gaussian forecasters: flat Adam, truncated BPTT, replay buffer, copies."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from test_predictor_base import ar_data  # tests/ is on sys.path

from envs.errors import ConfigError, DataError
from predictors import OnlineLSTM, load_predictor
from predictors.metadata import WEIGHTS_FILE
from predictors.nets import RecurrentGaussianNet
from predictors.online_optim import FlatAdam
from predictors.replay import ReplayBuffer
from predictors.toy_series import ar1

TINY = {"window": 12, "hidden_size": 8, "max_epochs": 2, "batch_size": 64, "online_bptt": 4}


def _grads(net: torch.nn.Module, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = scale * torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("scale", [1e-3, 10.0])  # below and above the clipping threshold
def test_flat_adam_equals_torch_adam_after_clip_grad_norm(scale):
    torch.manual_seed(0)
    net = RecurrentGaussianNet(3, 2, hidden_size=6, num_layers=2)
    ref = copy.deepcopy(net)
    flat = FlatAdam(net.parameters(), lr=1e-2, max_grad_norm=1.0)
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=True)
    for step in range(6):
        _grads(net, step, scale)
        _grads(ref, step, scale)
        flat.step()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        adam.step()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # A torch Adam state (files saved before FlatAdam) loads as the same moments.
    other = FlatAdam(ref.parameters(), lr=1e-2, max_grad_norm=1.0)
    other.load_state_dict(adam.state_dict())
    assert other.steps == 6
    torch.testing.assert_close(other.exp_avg, flat.exp_avg, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(other.exp_avg_sq, flat.exp_avg_sq, rtol=1e-5, atol=1e-9)
    with pytest.raises(DataError, match="parameter sizes"):
        FlatAdam(list(net.parameters())[:2], lr=1e-2).load_state_dict(flat.state_dict())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_truncated_bptt_keeps_the_forward_and_cuts_the_gradient(cell):
    torch.manual_seed(1)
    net = RecurrentGaussianNet(3, 2, hidden_size=6, num_layers=2, cell=cell)
    x = torch.randn(5, 10, 3)
    full = net.encode(x)
    cut = net.encode(x, grad_steps=3)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)
    full.sum().backward()
    g_full = [p.grad.clone() for p in net.layers[0].parameters()]
    net.zero_grad()
    cut.sum().backward()
    g_cut = [p.grad.clone() for p in net.layers[0].parameters()]
    # The recurrent weights' gradient is truncated (it differs), not dropped (it is non-zero).
    assert any(not torch.allclose(a, b) for a, b in zip(g_full, g_cut, strict=True))
    assert all(torch.count_nonzero(g) > 0 for g in g_cut)
    with torch.no_grad():  # without autograd there is nothing to truncate: one plain pass
        torch.testing.assert_close(net.encode(x, grad_steps=3), full.detach())


def test_replay_buffer_wraps_and_draws_reproducibly():
    buf = ReplayBuffer(capacity=5, window=2, n_features=1, n_outputs=1)
    for start in (0, 3, 6):  # 9 samples through a ring of 5
        vals = np.arange(start, start + 3, dtype=np.float32)
        buf.push(vals[:, None, None].repeat(2, axis=1), vals[:, None], np.ones(3, np.float32))
    assert len(buf) == 5 and buf.pos == 4
    assert sorted(buf.targets[:, 0].tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    a = buf.sample(4, np.random.default_rng(3))
    b = buf.sample(4, np.random.default_rng(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    big = np.arange(7, dtype=np.float32)
    buf.push(big[:, None, None].repeat(2, axis=1), big[:, None], np.ones(7, np.float32))
    assert sorted(buf.targets[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]


def _fitted(**extra) -> tuple[OnlineLSTM, np.ndarray, np.ndarray]:
    feats, targs = ar_data(500)
    model = OnlineLSTM(**{**TINY, **extra})
    model.fit((feats[:400], targs[:400]))
    return model, feats, targs


def test_online_steps_learn_and_copies_are_independent():
    model, feats, targs = _fitted()
    before = model.predict_block(feats, np.arange(420, 440))
    twin = copy.deepcopy(model)
    for t in range(400, 430):
        twin.update(twin.samples(feats, targs, np.array([t])))
    # The copy learnt (its predictions moved) and the original did not.
    assert not np.allclose(twin.predict_block(feats, np.arange(420, 440)), before)
    np.testing.assert_array_equal(model.predict_block(feats, np.arange(420, 440)), before)
    assert twin.stats().updates == 30 and model.stats().updates == 0
    # A copy of the copy keeps learning the same way as the copy itself.
    third = copy.deepcopy(twin)
    batch = twin.samples(feats, targs, np.arange(430, 433))
    assert twin.update(batch) == pytest.approx(third.update(batch), rel=1e-6)
    np.testing.assert_allclose(
        twin.predict_block(feats, np.arange(440, 450)),
        third.predict_block(feats, np.arange(440, 450)),
        rtol=1e-6,
    )


def test_truncation_does_not_change_what_an_update_scores():
    # The score of new samples comes from the step's forward, which truncation leaves intact.
    cut, feats, targs = _fitted(online_bptt=3)
    full, _, _ = _fitted(online_bptt=0)
    batch = cut.samples(feats, targs, np.arange(400, 404))
    cut.update(batch)
    full.update(batch)
    assert cut.stats().loss_mean == pytest.approx(full.stats().loss_mean, rel=1e-5)
    assert cut.stats().coverage_90 == full.stats().coverage_90


def test_online_optimizer_state_round_trips_and_old_files_load(tmp_path):
    model, feats, targs = _fitted()
    for t in range(400, 410):
        model.update(model.samples(feats, targs, np.array([t])))
    model.save(tmp_path / "new")
    loaded = load_predictor(tmp_path / "new", device="cpu")
    assert loaded._online_opt is not None and loaded._online_opt.steps == 10
    torch.testing.assert_close(loaded._online_opt.exp_avg, model._online_opt.exp_avg)
    # A weights file written before FlatAdam holds torch.optim.Adam's state dict.
    adam = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    model.net.zero_grad()
    model.net(torch.zeros(1, 12, 2))[0].sum().backward()
    adam.step()
    buf = io.BytesIO()
    torch.save({"model": model.net.state_dict(), "online_optimizer": adam.state_dict()}, buf)
    (tmp_path / "new" / WEIGHTS_FILE).write_bytes(buf.getvalue())
    old = load_predictor(tmp_path / "new", device="cpu")
    assert old._online_opt.steps == 1
    flat_m = torch.cat([adam.state[p]["exp_avg"].reshape(-1) for p in model.net.parameters()])
    torch.testing.assert_close(old._online_opt.exp_avg, flat_m)


def test_online_bptt_is_checked():
    with pytest.raises(ConfigError, match="online_bptt"):
        OnlineLSTM(online_bptt=-1)


def _continue(model, feats: np.ndarray, targs: np.ndarray) -> list[np.ndarray]:
    """Updates and predictions in the provider's order (predict a chunk, then learn)."""
    out = []
    for t in range(400, 480, 8):
        out.append(model.predict_block(feats, np.arange(t, t + 8)))
        out.append(np.array([model.update(model.samples(feats, targs, np.arange(t - 1, t + 7)))]))
    out.append(model.predict_block(feats, np.arange(480, 490)))
    return out


@pytest.mark.parametrize(("scope", "cell"), [("all", "lstm"), ("head", "lstm"), ("all", "gru")])
def test_reloaded_forecaster_continues_bit_identically(tmp_path, scope, cell):
    """Issue 6: save -> load -> the same update()/predict() calls give the never-saved model's
    outputs exactly: the replay buffer the fit seeded and the replay-draw generator persist.
    (The GRU's online step runs predictors.gru's kernel, whose reused buffers must not leak.)"""
    model, feats, targs = _fitted(online_scope=scope, replay_capacity=300, cell=cell)
    # Saved right after the fit (as a training run saves it) and after some online steps.
    for stage in ("fitted", "online"):
        model.save(tmp_path / stage)
        loaded = load_predictor(tmp_path / stage, device="cpu")
        assert len(loaded.replay) == len(model.replay) > 0
        assert loaded.replay.pos == model.replay.pos
        twin = copy.deepcopy(model)
        got_all, want_all = _continue(loaded, feats, targs), _continue(twin, feats, targs)
        for got, want in zip(got_all, want_all, strict=True):
            np.testing.assert_array_equal(got, want)
        if stage == "fitted":
            for t in range(390, 400):  # wrap the 300-slot ring before the second save
                model.update(model.samples(feats, targs, np.arange(t - 30, t)))
            assert model.replay.size == 300


def test_predictor_saved_without_online_state_loads_with_empty_replay(tmp_path):
    """Directories saved before the online state was persisted load as they did before."""
    model, feats, targs = _fitted()
    model.save(tmp_path / "p")
    state = torch.load(tmp_path / "p" / WEIGHTS_FILE, weights_only=True)
    assert set(state["online_state"]) == {"replay", "rng"}
    del state["online_state"]
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "p" / WEIGHTS_FILE).write_bytes(buf.getvalue())
    old = load_predictor(tmp_path / "p", device="cpu")
    assert len(old.replay) == 0
    np.testing.assert_array_equal(
        old.predict_block(feats, np.arange(400, 420)),
        model.predict_block(feats, np.arange(400, 420)),
    )
    assert np.isfinite(old.update(old.samples(feats, targs, np.arange(400, 408))))
    assert len(old.replay) == 8


def test_malformed_online_state_is_a_clear_error(tmp_path):
    model, _, _ = _fitted()
    model.save(tmp_path / "p")
    state = torch.load(tmp_path / "p" / WEIGHTS_FILE, weights_only=True)
    state["online_state"]["replay"]["windows"] = torch.zeros(3, 2, 2)
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "p" / WEIGHTS_FILE).write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="replay windows has shape"):
        load_predictor(tmp_path / "p", device="cpu")


def test_reloaded_window_model_continues_bit_identically(tmp_path):
    """Same for the window models (VAE): replay, replay draws and the seeded sampling noise."""
    from predictors import MarketVAE

    x = ar1(600, seed=2)[:, None]
    model = MarketVAE(latent_dim=2, window=8, max_epochs=2, batch_size=128, replay_capacity=200)
    model.fit((x[:400], x[:400]))
    model.save(tmp_path / "vae")
    loaded = load_predictor(tmp_path / "vae", device="cpu")
    assert len(loaded.replay) == len(model.replay) > 0
    outs = []
    for m in (loaded, model):
        seq = []
        for t in range(400, 480, 16):
            seq.append(m.predict_block(x, np.arange(t, t + 16)))
            seq.append(np.array([m.update(m.samples(x, x, np.arange(t, t + 16)))]))
        outs.append(seq)
    for got, want in zip(*outs, strict=True):
        np.testing.assert_array_equal(got, want)
