"""Attention feature extractors over market windows (torch modules) and an attention forecaster.

Every extractor maps a window of bars ending at ``t`` to one feature vector: ``(B, W, F) -> (B, D)``
(``CrossMarketAttention``: ``(B, W, N, F) -> (B, D)``). They read only the window they are given,
so used inside a predictor (``AttentionForecaster``) or an agent's network they keep the causality
of the window (bars ``<= t``). Where tokens attend over time they do so under a causal mask, so the
summary of an earlier position never reads later ones.

* ``MultiScaleAttention``: the window average-pooled at several resolutions (e.g. 1, 4, 16 bars,
  bins aligned to end at ``t``), causal self-attention per scale, then a learned query attends
  over the scales' summaries (multi-resolution idea as in Pyraformer, Liu et al. 2022).
* ``TemporalDecayAttention``: a query from the newest bar attends over the window with a score
  penalty ``-lambda * distance`` (ALiBi, Press et al. 2022); ``lambda`` is learned per head or
  fixed.
* ``CrossMarketAttention``: at each time step the assets attend to each other (with a mask for
  missing assets), then each asset's history is summarised by decay attention over time.
* ``HierarchicalTimeAttention``: causal attention within chunks of ``c`` bars, then causal
  attention across the chunk summaries (as in hierarchical attention networks, Yang et al. 2016).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from envs.errors import ConfigError
from predictors.base import register_predictor
from predictors.forecaster import ForecasterConfig, GaussianForecaster


# --- building blocks -------------------------------------------------------------------------
def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """Fixed ``(length, dim)`` sinusoidal positional encoding (Vaswani et al. 2017, section 3.5)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)[:, : dim // 2]
    return pe


class SinusoidalPositionalEncoding(nn.Module):
    """Add a sinusoidal encoding of the position to ``(B, L, D)`` tokens.

    Positions count back from the newest token (the last one is position 0) so that a token's
    encoding means "k bars before t" whatever the window length.

    Args:
        dim: token width ``D``.
        max_len: longest sequence supported.
    """

    def __init__(self, dim: int, max_len: int = 4096) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` plus the encoding of each position's distance from the last token."""
        length = x.shape[-2]
        return x + self.pe[:length].flip(0)


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``(L, L)`` bool mask, True where attention is forbidden (key after query)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class CausalSelfAttention(nn.Module):
    """Pre-norm transformer block (attention + MLP) under a causal mask.

    Args:
        dim: token width.
        n_heads: attention heads (``dim`` divisible by it).
        dropout: dropout on attention weights and the MLP.
    """

    def __init__(self, dim: int, n_heads: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, L, D) -> (B, L, D)``; ``key_padding_mask`` (B, L) True marks padding tokens."""
        h = self.norm1(x)
        length = x.shape[1]
        mask = causal_mask(length, x.device)
        if key_padding_mask is not None:
            # Padding keys are hidden from every query but themselves: a padding query then
            # attends to itself only (finite, and unused), a real query never sees padding.
            eye = torch.eye(length, dtype=torch.bool, device=x.device)
            mask = mask[None] | (key_padding_mask.to(torch.bool)[:, None, :] & ~eye[None])
            mask = mask.repeat_interleave(self.attn.num_heads, dim=0)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + a
        return x + self.mlp(self.norm2(x))


class QueryPooling(nn.Module):
    """A learned query attends over ``(B, L, D)`` tokens and returns ``(B, D)``."""

    def __init__(self, dim: int, n_heads: int = 2) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention-weighted summary of the tokens (padding tokens masked out)."""
        q = self.query.expand(x.shape[0], -1, -1)
        out, _ = self.attn(q, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        return out[:, 0]


def _check_heads(dim: int, n_heads: int, where: str) -> None:
    if dim < 1 or n_heads < 1 or dim % n_heads:
        raise ConfigError(f"{where}: dim {dim} must be a positive multiple of n_heads {n_heads}")


# --- extractors ------------------------------------------------------------------------------
class MultiScaleAttention(nn.Module):
    """Attention over several temporal resolutions of one window.

    For each scale ``s`` the window is average-pooled into bins of ``s`` bars aligned to end at the
    newest bar (leftover bars at the old end are dropped), projected, position-encoded and run
    through causal self-attention; the newest token of each scale summarises it. A learned query
    then attends over the per-scale summaries.

    Args:
        n_features: features per bar ``F``.
        dim: output width ``D``.
        scales: pooling widths in bars (each must fit in the window at call time).
        n_heads: attention heads.
        dropout: attention and MLP dropout.
    """

    def __init__(
        self,
        n_features: int,
        dim: int = 32,
        scales: Sequence[int] = (1, 4, 16),
        n_heads: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_heads(dim, n_heads, "MultiScaleAttention")
        if not scales or any(int(s) < 1 for s in scales):
            raise ConfigError(f"MultiScaleAttention: scales {list(scales)} must be ints >= 1")
        self.scales = tuple(int(s) for s in scales)
        self.proj = nn.Linear(n_features, dim)
        self.pos = SinusoidalPositionalEncoding(dim)
        self.scale_embed = nn.Parameter(torch.zeros(len(self.scales), dim))
        self.blocks = nn.ModuleList([CausalSelfAttention(dim, n_heads, dropout) for _ in scales])
        self.pool = QueryPooling(dim, n_heads)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, W, F) -> (B, D)``."""
        b, w, f = x.shape
        summaries = []
        for k, (s, block) in enumerate(zip(self.scales, self.blocks, strict=True)):
            n_bins = w // s
            if n_bins < 1:
                raise ConfigError(f"MultiScaleAttention: scale {s} is longer than the window {w}")
            # Bins end at the newest bar: drop the oldest w - n_bins * s bars.
            pooled = x[:, w - n_bins * s :].reshape(b, n_bins, s, f).mean(dim=2)
            h = block(self.pos(self.proj(pooled)) + self.scale_embed[k])
            summaries.append(h[:, -1])
        return self.pool(torch.stack(summaries, dim=1))


class TemporalDecayAttention(nn.Module):
    """The newest bar queries the window with scores penalised by ``lambda * distance``.

    Score of key ``j`` (``d_j`` bars before ``t``): ``q.k_j / sqrt(d_head) - lambda_h * d_j``
    (ALiBi, Press et al. 2022). ``lambda_h = softplus(rho_h)`` is learned per head, or fixed at
    ``decay`` when ``learn_decay`` is False; head ``h`` starts at ``decay * 2^-h`` so heads cover
    short and long memories.

    Args:
        n_features: features per bar.
        dim: output width.
        n_heads: heads.
        decay: initial (or fixed) decay per bar of the first head.
        learn_decay: learn the per-head decay rates.
    """

    def __init__(
        self,
        n_features: int,
        dim: int = 32,
        n_heads: int = 2,
        decay: float = 0.1,
        learn_decay: bool = True,
    ) -> None:
        super().__init__()
        _check_heads(dim, n_heads, "TemporalDecayAttention")
        if decay < 0:
            raise ConfigError(f"TemporalDecayAttention: decay {decay} must be >= 0")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.proj = nn.Linear(n_features, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        rates = torch.tensor([max(decay * 2.0**-h, 1e-6) for h in range(n_heads)])
        rho = torch.log(torch.expm1(rates))  # inverse softplus
        if learn_decay:
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("rho", rho)
        self.out_dim = dim

    @property
    def decay_rates(self) -> torch.Tensor:
        """``(n_heads,)`` current decay per bar of each head."""
        return F.softplus(self.rho)

    def attend(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(B, D)`` summary and the ``(B, H, W)`` attention weights."""
        b, w, _ = x.shape
        h = self.proj(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q = q[:, -1].reshape(b, self.n_heads, 1, self.head_dim)
        k = k.reshape(b, w, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, w, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2))[:, :, 0] / math.sqrt(self.head_dim)  # (B, H, W)
        distance = torch.arange(w - 1, -1, -1, device=x.device, dtype=x.dtype)
        scores = scores - self.decay_rates[None, :, None] * distance
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        summary = (weights[..., None] * v).sum(dim=2).reshape(b, -1)
        return self.out(summary), weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, W, F) -> (B, D)``."""
        return self.attend(x)[0]


class CrossMarketAttention(nn.Module):
    """Assets attend to each other at every time step, then over time with decay attention.

    Args:
        n_features: features per asset and bar.
        dim: token and output width.
        n_heads: heads.
        decay: initial decay of the temporal attention.
        per_asset: return ``(B, N, D)`` per-asset features instead of their ``(B, D)`` mean.
    """

    def __init__(
        self,
        n_features: int,
        dim: int = 32,
        n_heads: int = 2,
        decay: float = 0.1,
        per_asset: bool = False,
    ) -> None:
        super().__init__()
        _check_heads(dim, n_heads, "CrossMarketAttention")
        self.proj = nn.Linear(n_features, dim)
        self.norm = nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.temporal = TemporalDecayAttention(dim, dim, n_heads, decay)
        self.per_asset = per_asset
        self.out_dim = dim

    def forward(self, x: torch.Tensor, asset_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, W, N, F) -> (B, D)`` (or ``(B, N, D)`` with ``per_asset``).

        Args:
            x: windows of ``N`` assets.
            asset_mask: optional ``(B, N)`` bool, True where an asset is missing; missing assets
                are neither attended to nor averaged (their own outputs are undefined and dropped).
        """
        b, w, n, _ = x.shape
        h = self.proj(x).reshape(b * w, n, -1)
        mask = None
        if asset_mask is not None:
            mask = asset_mask.to(torch.bool)[:, None, :].expand(b, w, n).reshape(b * w, n)
        hn = self.norm(h)
        a, _ = self.cross(hn, hn, hn, key_padding_mask=mask, need_weights=False)
        h = (h + a).reshape(b, w, n, -1).permute(0, 2, 1, 3).reshape(b * n, w, -1)
        per_asset = self.temporal(h).reshape(b, n, -1)
        if self.per_asset:
            return per_asset
        if asset_mask is None:
            return per_asset.mean(dim=1)
        keep = (~asset_mask.to(torch.bool)).to(per_asset.dtype)[..., None]
        per_asset = torch.where(keep > 0, per_asset, torch.zeros_like(per_asset))
        return (per_asset * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


class HierarchicalTimeAttention(nn.Module):
    """Causal attention within chunks of ``chunk`` bars, then across the chunk summaries.

    Chunks are aligned to end at the newest bar; when ``W`` is not a multiple of ``chunk`` the
    oldest chunk is left-padded and the padding is masked out.

    Args:
        n_features: features per bar.
        dim: output width.
        chunk: bars per chunk.
        n_heads: heads.
        dropout: attention and MLP dropout.
    """

    def __init__(
        self, n_features: int, dim: int = 32, chunk: int = 8, n_heads: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_heads(dim, n_heads, "HierarchicalTimeAttention")
        if chunk < 1:
            raise ConfigError(f"HierarchicalTimeAttention: chunk {chunk} must be >= 1")
        self.chunk = int(chunk)
        self.proj = nn.Linear(n_features, dim)
        self.pos = SinusoidalPositionalEncoding(dim)
        self.local = CausalSelfAttention(dim, n_heads, dropout)
        self.glob = CausalSelfAttention(dim, n_heads, dropout)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, W, F) -> (B, D)``."""
        b, w, _ = x.shape
        c = self.chunk
        n_chunks = -(-w // c)
        pad = n_chunks * c - w
        h = self.proj(x)
        pad_mask = torch.zeros(b, n_chunks * c, dtype=torch.bool, device=x.device)
        if pad:
            h = torch.cat([h.new_zeros(b, pad, h.shape[-1]), h], dim=1)
            pad_mask[:, :pad] = True
        tokens = self.pos(h.reshape(b * n_chunks, c, -1))
        local = self.local(tokens, key_padding_mask=pad_mask.reshape(b * n_chunks, c))
        summaries = local[:, -1].reshape(b, n_chunks, -1)
        return self.glob(self.pos(summaries))[:, -1]


EXTRACTORS = {
    "multiscale": MultiScaleAttention,
    "decay": TemporalDecayAttention,
    "hierarchical": HierarchicalTimeAttention,
}


def build_extractor(name: str, n_features: int, dim: int, **kwargs: Any) -> nn.Module:
    """A ``(B, W, F) -> (B, dim)`` extractor: ``multiscale``, ``decay`` or ``hierarchical``."""
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown attention extractor {name!r}; known: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](n_features, dim, **kwargs)


# --- forecaster ------------------------------------------------------------------------------
class ExtractorGaussianNet(nn.Module):
    """An attention extractor followed by a Gaussian (mean, variance) head.

    Args:
        extractor: ``(B, W, F) -> (B, D)`` module with an ``out_dim`` attribute.
        n_features: features per bar (for the input skip).
        n_outputs: outputs.
        input_skip: feed the last bar's features to the head too (as in ``RecurrentGaussianNet``).
        min_var: variance floor (scaled units).
    """

    def __init__(
        self,
        extractor: nn.Module,
        n_features: int,
        n_outputs: int,
        input_skip: bool = True,
        min_var: float = 1e-4,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.input_skip = bool(input_skip)
        self.head = nn.Linear(extractor.out_dim + (n_features if input_skip else 0), 2 * n_outputs)
        self.min_var = float(min_var)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, var)``, each ``(B, n_outputs)``."""
        h = self.extractor(x)
        if self.input_skip:
            h = torch.cat([h, x[:, -1]], dim=-1)
        mean, raw_var = self.head(h).chunk(2, dim=-1)
        return mean, F.softplus(raw_var) + self.min_var


@dataclass
class AttentionForecasterConfig(ForecasterConfig):
    """``ForecasterConfig`` plus the attention extractor (``hidden_size`` is its width)."""

    extractor: str = "decay"
    """``multiscale``, ``decay`` or ``hierarchical``."""
    n_heads: int = 2
    """Attention heads (``hidden_size`` must be a multiple)."""
    scales: tuple[int, ...] = (1, 4, 16)
    """Pooling widths of ``multiscale`` (each <= window)."""
    chunk: int = 8
    """Chunk length of ``hierarchical``."""
    decay: float = 0.1
    """Initial decay per bar of ``decay``."""


@register_predictor("attention")
class AttentionForecaster(GaussianForecaster):
    """Gaussian forecaster whose window encoder is one of this module's attention extractors.

    Everything but the network (fit with early stopping, online updates with replay, blocks,
    save/load) is ``GaussianForecaster``'s.

    Args:
        **config: ``AttentionForecasterConfig`` fields.
    """

    config_class = AttentionForecasterConfig
    version = 1

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        c = self.config
        if c.extractor not in EXTRACTORS:
            raise ConfigError(
                f"predictor 'attention': config field 'extractor' = {c.extractor!r}, expected "
                f"one of {sorted(EXTRACTORS)}"
            )
        _check_heads(c.hidden_size, c.n_heads, "predictor 'attention' (hidden_size, n_heads)")
        if c.extractor == "multiscale" and max(c.scales) > c.window:
            raise ConfigError(
                f"predictor 'attention': config field 'scales' = {list(c.scales)}, expected "
                f"each <= window {c.window}"
            )

    def _build_net(self) -> ExtractorGaussianNet:  # type: ignore[override]
        c = self.config
        kwargs: dict[str, Any] = {"n_heads": c.n_heads}
        if c.extractor == "multiscale":
            kwargs.update(scales=c.scales, dropout=c.dropout)
        elif c.extractor == "hierarchical":
            kwargs.update(chunk=c.chunk, dropout=c.dropout)
        else:
            kwargs.update(decay=c.decay)
        n_feat = len(self.feature_names)
        extractor = build_extractor(c.extractor, n_feat, c.hidden_size, **kwargs)
        return ExtractorGaussianNet(extractor, n_feat, self.n_outputs, c.input_skip, c.min_var).to(
            self.device
        )
