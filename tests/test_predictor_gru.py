"""FastGRU (predictors.gru): nn.GRU's parameters and numbers, hand-written truncated backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from predictors.gru import FastGRU, gru_sequence
from predictors.nets import RecurrentGaussianNet


def _pair(n_in: int, hidden: int) -> tuple[nn.GRU, FastGRU]:
    torch.manual_seed(3)
    ref = nn.GRU(n_in, hidden, batch_first=True)
    torch.manual_seed(3)
    fast = FastGRU(n_in, hidden, batch_first=True)
    return ref, fast


def test_fast_gru_is_an_nn_gru_with_the_same_parameters():
    ref, fast = _pair(3, 5)
    # Same names, shapes, initialisation (same seed, same draws) and state dict, both ways.
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == [
        (k, v.shape) for k, v in fast.state_dict().items()
    ]
    for a, b in zip(ref.parameters(), fast.parameters(), strict=True):
        assert torch.equal(a, b)
    ref.load_state_dict(fast.state_dict())
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 3)
    # forward is nn.GRU's own (fit and batched inference are unchanged, bit for bit).
    for got, want in zip(fast(x), ref(x), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(("batch", "steps", "n_in", "hidden"), [(5, 7, 3, 4), (33, 8, 32, 32)])
@pytest.mark.parametrize("with_state", [False, True])
def test_fused_forward_and_gradients_match_nn_gru(batch, steps, n_in, hidden, with_state):
    ref, fast = _pair(n_in, hidden)
    gen = torch.Generator().manual_seed(batch + steps)
    x = torch.randn(batch, steps, n_in, generator=gen)
    h0 = torch.randn(1, batch, hidden, generator=gen) if with_state else None
    grad_out = torch.randn(batch, steps, hidden, generator=gen)
    grad_hn = torch.randn(1, batch, hidden, generator=gen)
    results = []
    for module, call in ((ref, ref), (fast, fast.forward_fused)):
        xi = x.clone().requires_grad_()
        hi = None if h0 is None else h0.clone().requires_grad_()
        out, h_n = call(xi, hi)
        ((out * grad_out).sum() + (h_n * grad_hn).sum()).backward()
        grads = [p.grad for p in module.parameters()] + [xi.grad]
        grads += [] if hi is None else [hi.grad]
        results.append((out.detach(), h_n.detach(), grads))
    (out_r, hn_r, g_r), (out_f, hn_f, g_f) = results
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hn_f, hn_r, rtol=1e-5, atol=1e-6)
    for got, want in zip(g_f, g_r, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the no-autograd path computes the same numbers
        out_i, _ = fast.forward_fused(x, h0)
    torch.testing.assert_close(out_i, out_f, rtol=0, atol=0)


def _float64_gru_args(
    seed: int, steps: int, batch: int, n_in: int, hidden: int
) -> tuple[list[torch.Tensor], torch.Generator]:
    """Random float64 ``gru_sequence`` inputs (x, h0, w_ih, w_hh, b_ih, b_hh), requiring grad,
    and the generator that drew them (for the test's later draws)."""
    gen = torch.Generator().manual_seed(seed)
    args = [
        torch.randn(steps, batch, n_in, generator=gen, dtype=torch.float64),
        torch.randn(batch, hidden, generator=gen, dtype=torch.float64),
        0.5 * torch.randn(3 * hidden, n_in, generator=gen, dtype=torch.float64),
        0.5 * torch.randn(3 * hidden, hidden, generator=gen, dtype=torch.float64),
        torch.randn(3 * hidden, generator=gen, dtype=torch.float64),
        torch.randn(3 * hidden, generator=gen, dtype=torch.float64),
    ]
    return [a.requires_grad_() for a in args], gen


@pytest.mark.parametrize("grad_steps", [0, 2])
def test_hand_written_backward_passes_gradcheck(grad_steps):
    steps = 4
    args, gen = _float64_gru_args(seed=0, steps=steps, batch=3, n_in=2, hidden=5)
    if grad_steps == 0:
        assert torch.autograd.gradcheck(gru_sequence, args)
        return

    # Truncated: the gradient of the last grad_steps steps restarted from a detached state.
    def truncated(x, h0, w_ih, w_hh, b_ih, b_hh):
        return gru_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, grad_steps)[-grad_steps:]

    def reference(x, h0, w_ih, w_hh, b_ih, b_hh):
        cut = steps - grad_steps
        start = gru_sequence(x[:cut], h0, w_ih, w_hh, b_ih, b_hh)[-1].detach()
        return gru_sequence(x[cut:], start, w_ih, w_hh, b_ih, b_hh)[1:]

    out_t, out_r = truncated(*args), reference(*args)
    torch.testing.assert_close(out_t, out_r)
    grad_out = torch.randn(out_t.shape, generator=gen, dtype=torch.float64)
    g_t = torch.autograd.grad(out_t, args, grad_out, allow_unused=True)
    g_r = torch.autograd.grad(out_r, args, grad_out, allow_unused=True)
    for got, want, arg in zip(g_t, g_r, args, strict=True):
        want = torch.zeros_like(arg) if want is None else want
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_online_encode_of_a_gru_net_equals_the_split_truncation(num_layers):
    """RecurrentGaussianNet.encode(grad_steps) of a GRU stack runs FastGRU's kernel in one pass
    per layer; its output and gradients equal the split path's (prefix without autograd, then
    the last bars from the carried state through nn.GRU)."""
    torch.manual_seed(0)
    net = RecurrentGaussianNet(3, 2, hidden_size=6, num_layers=num_layers, cell="gru")
    assert all(isinstance(rnn, FastGRU) for rnn in net.layers)
    x = torch.randn(5, 10, 3)
    results = []
    for fused in (True, False):
        net.zero_grad()
        net.fused_online = fused
        assert net._fused(x) == fused  # the fused kernel runs (or not) as asked
        mean, var = net.decode(net.encode(x, grad_steps=3))
        (mean.sum() + var.log().sum()).backward()
        results.append((mean.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}))
    (m_fused, g_fused), (m_split, g_split) = results
    torch.testing.assert_close(m_fused, m_split, rtol=1e-5, atol=1e-6)
    for name in g_split:
        torch.testing.assert_close(g_fused[name], g_split[name], rtol=1e-5, atol=1e-6)


def test_fused_path_only_where_it_applies():
    assert FastGRU(3, 4, batch_first=True).fusable(torch.zeros(2, 5, 3))
    assert not FastGRU(3, 4).fusable(torch.zeros(5, 2, 3))  # time-major
    assert not FastGRU(3, 4, num_layers=2, batch_first=True).fusable(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="not fusable"):
        FastGRU(3, 4, bidirectional=True, batch_first=True).forward_fused(torch.zeros(2, 5, 3))


def test_workspaces_are_not_shared_between_live_graphs():
    """Buffers are reused between calls, never while a graph that needs them is alive."""
    ref, fast = _pair(3, 4)
    xs = [torch.randn(2, 5, 3) for _ in range(3)]
    outs = [fast.forward_fused(x)[0] for x in xs]  # three graphs alive at once, same shape
    for x, out in zip(xs, outs, strict=True):
        torch.testing.assert_close(out, ref(x)[0], rtol=1e-5, atol=1e-6)
    grads = []
    for out in reversed(outs):  # backward in reverse order, one retained twice
        fast.zero_grad()
        out.sum().backward(retain_graph=True)
        first = fast.weight_hh_l0.grad.clone()
        fast.zero_grad()
        out.sum().backward()
        torch.testing.assert_close(fast.weight_hh_l0.grad, first)
        grads.append(first)
    for x, got in zip(reversed(xs), grads, strict=True):
        ref.zero_grad()
        ref(x)[0].sum().backward()
        torch.testing.assert_close(got, ref.weight_hh_l0.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_steps", [0, 3])
def test_last_only_equals_the_last_row_of_the_sequence(grad_steps):
    args, gen = _float64_gru_args(seed=1, steps=6, batch=3, n_in=2, hidden=4)
    last = gru_sequence(*args, grad_steps=grad_steps, last_only=True)
    full = gru_sequence(*args, grad_steps=grad_steps)[-1]
    torch.testing.assert_close(last, full, rtol=0, atol=0)
    grad_out = torch.randn(last.shape, generator=gen, dtype=torch.float64)
    g_last = torch.autograd.grad(last, args, grad_out)
    g_full = torch.autograd.grad(full, args, grad_out)
    for got, want in zip(g_last, g_full, strict=True):
        torch.testing.assert_close(got, want)
    if grad_steps == 0:
        assert torch.autograd.gradcheck(lambda *a: gru_sequence(*a, last_only=True), args)


def test_workspace_pool_stays_bounded(monkeypatch):
    from predictors import gru

    monkeypatch.setattr(gru, "_POOL", {})
    w = [torch.randn(6, 2), torch.randn(6, 2), torch.randn(6), torch.randn(6)]  # H = 2
    for batch in range(1, gru._SHAPES + 5):  # more shapes than kept
        gru_sequence(torch.randn(3, batch, 2), None, *w)
    assert len(gru._POOL) == gru._SHAPES
    monkeypatch.setattr(gru, "_MAX_POOLED", 10)  # too large to keep: one-off buffers
    gru_sequence(torch.randn(3, 100, 2), None, *w)
    assert all(key[1] != 100 for key in gru._POOL)
