"""A one-layer GRU kernel for the CPU whose training step costs a few tensor operations per step.

PyTorch runs ``nn.LSTM`` on CPU through oneDNN's fused RNN kernels (``aten::mkldnn_rnn_layer``
forward and backward; oneDNN's GRU is not wired in), but ``nn.GRU`` through a per-time-step cell
of about twenty small autograd operations, each recorded in the graph and replayed in backward.
Issue 6's profile of the online step's recurrent part (batch 33, 24 bars without and 8 with
autograd, hidden 32, one thread): GRU 1.69 ms against the LSTM's 0.94 ms, which kept the GRU
forecaster's online step (2.56 ms) above the 2 ms goal.

``gru_sequence`` is one ``torch.autograd.Function`` over a time-major sequence:

* the input projection of all steps is one matrix product; ``b_hh``'s r and z parts are folded
  into it, so a step is five operations (``addmm_``, ``sigmoid_``, ``addcmul_``, ``tanh_``,
  ``lerp``), in place in buffers that backward reads, run in inference mode (no autograd
  dispatch) and indexed through per-step views made once per shape (``_Workspace``);
* backward is hand-written (the GRU equations of Cho et al. 2014 in PyTorch's form, below): every
  factor that does not depend on the incoming gradient is computed for all steps at once, so the
  backward recurrence is three operations per step, and the weight gradients are matrix products
  over all steps;
* ``grad_steps`` truncates back-propagation through time inside the kernel (one forward pass
  over the window, a backward through its last steps only), which is what the forecaster's
  online step asks for.

With ``h' = (1 - z) * n + z * h``, ``r = sigmoid(a_r)``, ``z = sigmoid(a_z)``,
``n = tanh(gi_n + r * gh_n)``, ``a_{r,z} = gi_{r,z} + gh_{r,z}``, ``gi = W_ih x + b_ih`` and
``gh = W_hh h + b_hh``, a gradient ``g = dL/dh'`` gives

* ``dL/d gi_n = g * (1 - z) * (1 - n^2)``  (call the factor ``A``),
* ``dL/d gh_n = g * A * r``,
* ``dL/d a_z = g * (h - n) * z * (1 - z)``,
* ``dL/d a_r = g * A * gh_n * r * (1 - r)``,
* ``dL/dh = g * z + [dL/d a_r, dL/d a_z, dL/d gh_n] @ W_hh``.

``FastGRU`` is an ``nn.GRU`` (same parameters, names, shapes, initialisation, r/z/n order and
``forward``, so fit, batched inference and saved models are exactly as before) with
``forward_fused`` through this kernel. The arithmetic equals ``nn.GRU``'s up to floating-point
rounding; the tests check outputs and gradients against ``nn.GRU`` and finite differences.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class _Workspace:
    """Buffers of one sequence shape and the per-step views of them that the loops index.

    Creating a view costs about half a microsecond, and the recurrence needs seven per step
    (over 200 for a 32-bar window, a quarter of the loop's cost), so they are made once per
    shape and reused. A workspace is leased to one call and, with autograd, to that call's
    graph until the graph is freed (``_Lease``): no call finds it holding another's numbers.
    """

    def __init__(self, steps: int, batch: int, hidden: int, like: torch.Tensor) -> None:
        self.shape = (steps, batch, hidden)
        self.like = like.new_empty((0,))  # dtype and device only: the caller's tensor may go
        self.busy = False
        self.pre = like.new_empty((steps, batch, 3 * hidden))
        """Step ``t`` turns ``pre[t]`` from ``[gi_r + b_hr, gi_z + b_hz, b_hn]`` into
        ``[r, z, gh_n]``."""
        self.n = like.new_empty((steps, batch, hidden))
        """``gi_n`` before step ``t``, the candidate ``n`` after it."""
        self.hs = like.new_empty((steps + 1, batch, hidden))
        """``hs[0] = h0``, ``hs[t + 1]`` the state after step ``t``."""
        h, pre = hidden, self.pre
        self.pre_2d = pre.view(steps * batch, 3 * h)
        self.pre_rz, self.pre_n, self.h0 = pre[..., : 2 * h], pre[..., 2 * h :], self.hs[0]
        self.steps = list(
            zip(
                pre.unbind(0),
                pre[..., : 2 * h].unbind(0),
                pre[..., :h].unbind(0),
                pre[..., h : 2 * h].unbind(0),
                pre[..., 2 * h :].unbind(0),
                self.n.unbind(0),
                self.hs[:-1].unbind(0),
                self.hs[1:].unbind(0),
                strict=True,
            )
        )
        self._backward: dict[int, _Backward] = {}

    def backward_buffers(self, grad_steps: int) -> _Backward:
        """Buffers and views for a backward through the last ``grad_steps`` steps."""
        if grad_steps not in self._backward:
            self._backward[grad_steps] = _Backward(self, grad_steps)
        return self._backward[grad_steps]


class _Backward:
    """A workspace's backward buffers for ``k`` steps after the cut, and views of them and of
    the forward's buffers (made once, like the forward's)."""

    def __init__(self, ws: _Workspace, k: int) -> None:
        steps, batch, h = ws.shape
        cut = steps - k
        gates = ws.pre[cut:]
        self.r, self.z, self.gh_n = gates[..., :h], gates[..., h : 2 * h], gates[..., 2 * h :]
        self.n, self.h_prev = ws.n[cut:], ws.hs[cut:-1]
        self.h_prev_2d = self.h_prev.reshape(k * batch, h)
        self.factors = ws.like.new_empty((k, batch, 3, h))
        """Rows r, z, n of ``d(a_r, a_z, gh_n) / dh'`` per step (module docstring: E, D, C)."""
        self.e, self.d, self.c = self.factors.unbind(2)
        self.d_gh = torch.empty_like(self.factors)
        self.d_gh_2d = self.d_gh.view(k * batch, 3 * h)
        self.d_gi_2d = ws.like.new_empty((k * batch, 3 * h))
        self.d_gi_rz, self.d_gh_rz = self.d_gi_2d[:, : 2 * h], self.d_gh_2d[:, : 2 * h]
        self.d_gi_n = self.d_gi_2d[:, 2 * h :].view(k, batch, h)
        self.dhs = ws.like.new_empty((k + 1, batch, h))
        """``dhs[t]``: ``dL/d hs[cut + t]``."""
        self.dhs_after = self.dhs[1:]
        self.steps = list(
            zip(
                self.factors.unbind(0),
                self.d_gh.unbind(0),
                self.d_gh.view(k, batch, 3 * h).unbind(0),
                self.z.unbind(0),
                self.dhs[1:].unsqueeze(2).unbind(0),
                self.dhs[1:].unbind(0),
                self.dhs[:-1].unbind(0),
                strict=True,
            )
        )


class _Lease:
    """Holds a workspace while it lives; kept on an autograd ``ctx``, until the graph is freed
    (after ``backward`` without ``retain_graph``, or when the graph is dropped unused)."""

    __slots__ = ("workspace",)

    def __init__(self, workspace: _Workspace) -> None:
        self.workspace = workspace

    def __del__(self) -> None:
        self.workspace.busy = False


_POOL: dict[tuple[Any, ...], list[_Workspace]] = {}
_POOL_LOCK = threading.Lock()
_PER_SHAPE = 4  # workspaces kept per shape (more concurrent graphs get one-off buffers)
_SHAPES = 16  # shapes kept, least recently used dropped first
# Numbers per buffer above which a workspace is one-off, so the pool's memory stays bounded.
_MAX_POOLED = 1 << 22


def _lease(steps: int, batch: int, hidden: int, like: torch.Tensor) -> _Lease:
    if steps * batch * 3 * hidden > _MAX_POOLED:  # large batches: views are cheap by comparison
        ws = _Workspace(steps, batch, hidden, like)
        ws.busy = True
        return _Lease(ws)
    key = (steps, batch, hidden, like.dtype, like.device)
    with _POOL_LOCK:
        spaces = _POOL.pop(key, [])
        _POOL[key] = spaces  # most recently used last
        for ws in spaces:
            if not ws.busy:
                ws.busy = True
                return _Lease(ws)
        ws = _Workspace(steps, batch, hidden, like)
        ws.busy = True
        if len(spaces) < _PER_SHAPE:
            spaces.append(ws)
        while len(_POOL) > _SHAPES:
            del _POOL[next(iter(_POOL))]
        return _Lease(ws)


def _run(
    ws: _Workspace,
    x: torch.Tensor,
    h0: torch.Tensor | None,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
) -> None:
    """The GRU over time-major ``x`` into ``ws``: one matrix product for all steps' input
    projection, then five tensor operations per step. ``h0`` None: zeros."""
    steps, batch, hidden = ws.shape
    with torch.inference_mode():
        # Inference mode drops the autograd and view-tracking dispatch from every operation
        # (about a tenth of the loop's cost); the buffers are ordinary tensors written in
        # place, which inference mode allows.
        torch.addmm(b_ih, x.reshape(steps * batch, -1), w_ih.t(), out=ws.pre_2d)
        ws.n.copy_(ws.pre_n)
        # b_hh's r and z parts are added here once for all steps, which saves an addition per
        # step; its n part is where the step's addmm_ adds h W_hn^T.
        ws.pre_rz.add_(b_hh[: 2 * hidden])
        ws.pre_n.copy_(b_hh[2 * hidden :])
        if h0 is None:
            ws.h0.zero_()
        else:
            ws.h0.copy_(h0)
        w_hh_t = w_hh.t()
        for pre_t, rz_t, r_t, z_t, gh_n_t, n_t, h_t, h_next in ws.steps:
            pre_t.addmm_(h_t, w_hh_t)  # [a_r, a_z, gh_n]
            rz_t.sigmoid_()  # [r, z, gh_n]
            n_t.addcmul_(r_t, gh_n_t).tanh_()  # n = tanh(gi_n + r * gh_n)
            torch.lerp(n_t, h_t, z_t, out=h_next)  # (1 - z) n + z h = n + z (h - n)


class _GRUFunction(torch.autograd.Function):
    """One GRU layer over a time-major sequence, with a hand-written, optionally truncated,
    backward (``grad_steps``: only the last steps carry gradients; see ``gru_sequence``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        h0: torch.Tensor | None,
        w_ih: torch.Tensor,
        w_hh: torch.Tensor,
        b_ih: torch.Tensor,
        b_hh: torch.Tensor,
        grad_steps: int,
        last_only: bool,
    ) -> torch.Tensor:
        lease = _lease(x.shape[0], x.shape[1], w_hh.shape[1], x)
        _run(lease.workspace, x, h0, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, w_ih, w_hh)
        ctx.lease = lease  # the gates, candidates and states stay for backward
        ctx.grad_steps = grad_steps
        ctx.last_only = last_only
        return lease.workspace.hs[-1 if last_only else slice(None)].clone()

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx: Any, grad_hs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, w_ih, w_hh = ctx.saved_tensors
        ws: _Workspace = ctx.lease.workspace
        total, batch, _ = ws.shape
        # Steps [cut, total) carry gradients; hs[cut] (the state they start from) and everything
        # before it count as constants (truncated BPTT; cut = 0: the whole sequence, with h0).
        steps = ctx.grad_steps
        cut = total - steps
        b = ws.backward_buffers(steps)
        r, z, n = b.r, b.z, b.n
        with torch.inference_mode():  # as in _run: in place on ordinary tensors
            # Factors of the incoming gradient that do not depend on it, for all steps at once
            # (module docstring): E = A gh_n r (1 - r), D = (h - n) z (1 - z), C = A r, with
            # A = (1 - z) (1 - n^2) the factor of gi_n.
            one_minus_z = 1 - z
            a = one_minus_z * (1 - n * n)
            torch.mul(a, r, out=b.c)
            torch.mul(b.c, b.gh_n, out=b.e).mul_(1 - r)
            torch.sub(b.h_prev, n, out=b.d).mul_(z).mul_(one_minus_z)
            dhs = b.dhs
            if ctx.last_only:
                dhs[:-1].zero_()
                dhs[-1].copy_(grad_hs)
            else:
                dhs.copy_(grad_hs[cut:])
            per_step = b.steps
            for t in range(steps - 1, -1, -1):
                fac_t, d_gh_t, d_gh_2d, z_t, dh_3d, dh_t, dh_prev = per_step[t]
                torch.mul(fac_t, dh_3d, out=d_gh_t)
                if t > 0 or cut == 0:  # the gradient of hs[cut] is only wanted as dL/dh0
                    dh_prev.addcmul_(dh_t, z_t).addmm_(d_gh_2d, w_hh)
            # d(gi) is d(a_r, a_z) and, for the n block, A g (d(gh_n) is A r g).
            b.d_gi_rz.copy_(b.d_gh_rz)
            torch.mul(a, b.dhs_after, out=b.d_gi_n)
        # Gradients leave as fresh tensors made outside inference mode (products, sums).
        d_gi, d_gh_all = b.d_gi_2d, b.d_gh_2d
        need = ctx.needs_input_grad
        dx = dh0 = dw_ih = dw_hh = db_ih = db_hh = None
        if need[0]:
            part = (d_gi @ w_ih).view(steps, batch, -1)
            dx = part if cut == 0 else torch.cat([x.new_zeros((cut, *x.shape[1:])), part])
        if need[1]:
            dh0 = dhs[0].clone() if cut == 0 else torch.zeros_like(dhs[0])
        if need[2]:
            dw_ih = d_gi.t() @ x[cut:].reshape(steps * batch, -1)
        if need[3]:
            dw_hh = d_gh_all.t() @ b.h_prev_2d
        if need[4]:
            db_ih = d_gi.sum(0)
        if need[5]:
            db_hh = d_gh_all.sum(0)
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None


def gru_sequence(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor,
    b_hh: torch.Tensor,
    grad_steps: int = 0,
    last_only: bool = False,
) -> torch.Tensor:
    """Hidden states ``(T + 1, B, H)`` (``[0]`` is ``h0``) of one GRU layer over ``x``.

    Args:
        x: time-major inputs ``(T, B, I)``.
        h0: initial state ``(B, H)``; None: zeros.
        w_ih, w_hh, b_ih, b_hh: ``nn.GRU``'s ``weight_ih_l0`` ``(3H, I)``, ``weight_hh_l0``
            ``(3H, H)``, ``bias_ih_l0`` and ``bias_hh_l0`` ``(3H,)``, gates in r, z, n order.
        grad_steps: truncated back-propagation through time (Williams & Peng 1990): when
            ``0 < grad_steps < T`` only the last ``grad_steps`` steps carry gradients; the state
            they start from and every earlier input and output count as constants (the
            gradient of a layer restarted at the cut from a detached state). ``0``: all steps.
        last_only: return only the final state ``(B, H)`` (a single layer's forecaster reads
            nothing else; the whole sequence's copy and zero gradient are skipped).

    Returns:
        The states (a fresh tensor; ``(B, H)`` with ``last_only``); differentiable through
        the hand-written backward when autograd records.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, w_ih, w_hh, b_ih, b_hh)
    )
    steps = x.shape[0]
    if needs_grad:
        kept = steps if not 0 < grad_steps < steps else int(grad_steps)
        return _GRUFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, kept, last_only)
    lease = _lease(steps, x.shape[1], w_hh.shape[1], x)
    _run(lease.workspace, x, h0, w_ih, w_hh, b_ih, b_hh)
    return lease.workspace.hs[-1 if last_only else slice(None)].clone()


class FastGRU(nn.GRU):
    """``nn.GRU`` plus ``forward_fused``: the same layer through this module's CPU kernel.

    Same constructor, parameters (names, shapes, initialisation, r/z/n order), state dict and
    ``forward`` as ``nn.GRU``, so ``fit`` and batched inference are exactly what they were. The
    online step calls ``forward_fused`` (``RecurrentGaussianNet.encode`` with ``grad_steps``),
    which equals ``forward`` up to floating-point rounding and is cheaper for small batches.
    """

    def fusable(self, x: Any) -> bool:
        """Whether ``forward_fused`` runs this module's kernel for ``x`` (else ``forward``):
        one unidirectional, batch-first layer with biases and no projection, on the CPU."""
        return (
            isinstance(x, torch.Tensor)
            and x.device.type == "cpu"
            and x.dim() == 3
            and self.num_layers == 1
            and not self.bidirectional
            and self.bias
            and self.batch_first
            and self.proj_size == 0
        )

    def forward_fused(
        self, input: torch.Tensor, hx: torch.Tensor | None = None, grad_steps: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s ``(output (B, T, H), h_n (1, B, H))`` through ``gru_sequence``.

        ``grad_steps``: ``gru_sequence``'s truncation (0: none). Needs ``fusable(input)``;
        the caller keeps ``nn.GRU``'s kernels otherwise (CUDA: cuDNN).
        """
        if not self.fusable(input):
            raise ValueError("FastGRU.forward_fused: input not fusable (see FastGRU.fusable)")
        batch = input.shape[0]
        if hx is None:
            h0 = input.new_zeros((batch, self.hidden_size))
        else:
            h0 = hx.reshape(batch, self.hidden_size)
        hs = gru_sequence(
            input.transpose(0, 1).contiguous(),
            h0,
            self.weight_ih_l0,
            self.weight_hh_l0,
            self.bias_ih_l0,
            self.bias_hh_l0,
            grad_steps,
        )
        return hs[1:].transpose(0, 1), hs[-1:]
