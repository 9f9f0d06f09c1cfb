"""Variational autoencoders of market windows: representations, anomaly scores, synthetic windows.

A VAE (Kingma & Welling 2014) learns an encoder ``q(z | x)`` and a decoder ``p(x | z)`` by
maximising the evidence lower bound ``ELBO = E_q[log p(x | z)] - beta * KL(q(z | x) || N(0, I))``.
Here ``x`` is a window of ``W`` bars of ``F`` scaled features, flattened; the decoder is a diagonal
Gaussian whose log-variance is soft-bounded (the PETS / mbrl-lib bounds of DOMAIN.md), so the
likelihood stays finite when a window is reconstructed almost exactly.

* ``MarketVAE`` (kind ``vae``): block ``latent_i`` (posterior mean) and ``anomaly`` (the negative
  ELBO of the window in nats, evaluated at the posterior mean: an upper bound on ``-log p(x)``;
  windows unlike the training data score high, An & Cho 2015).
* ``ConditionalMarketVAE`` (kind ``cvae``): encoder and decoder conditioned on a regime label
  (Sohn et al. 2015); ``generate(regime, n, seed)`` draws synthetic windows of a regime. At
  inference the regime is not observed, so the block scores every regime: ``p_{regime}`` is the
  posterior ``p(k | x) ~ pi_k exp(-negELBO_k(x))`` (a generative classifier), ``anomaly`` is
  ``-log sum_k pi_k exp(-negELBO_k(x))`` and the latent is that of the most probable regime.
* ``HierarchicalMarketVAE`` (kind ``hvae``): a global latent over the whole window and local
  latents over sub-windows of ``chunk`` bars, ``q(z_g | x) q(z_l,k | x_k, z_g)``; the decoder
  rebuilds chunk ``k`` from ``(z_g, z_l,k, k)`` (two time scales, in the spirit of NVAE /
  Ladder VAEs, Vahdat & Kautz 2020, Sonderby et al. 2016). Block: ``latent_i`` (global),
  ``local_i`` (newest chunk), ``anomaly``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from envs.errors import DataError
from predictors.base import Encoding, register_predictor
from predictors.window_model import WindowModelConfig, WindowModelPredictor

LOG_2PI = math.log(2.0 * math.pi)


def soft_bound(logvar: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Soft clamp ``low <= logvar <= high`` with softplus (PETS, Chua et al. 2018; mbrl-lib)."""
    logvar = high - F.softplus(high - logvar)
    return low + F.softplus(logvar - low)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the last axis."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def gaussian_nll_sum(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``-log N(x; mean, exp(logvar))`` summed over the last axis (with the ``log 2 pi`` term)."""
    return 0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar)).sum(dim=-1)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Two hidden layers with SiLU activations."""
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, n_out),
    )


class WindowVAE(nn.Module):
    """MLP VAE of a flattened window, optionally conditioned on a one-hot label.

    Args:
        n_in: inputs (``W * F``).
        n_cond: width of the condition (0: unconditional).
        hidden: hidden width.
        latent_dim: latent width.
        min_logvar, max_logvar: soft bounds of the decoder's log-variance.
    """

    def __init__(
        self,
        n_in: int,
        n_cond: int,
        hidden: int,
        latent_dim: int,
        min_logvar: float = -6.0,
        max_logvar: float = 2.0,
    ) -> None:
        super().__init__()
        self.encoder = mlp(n_in + n_cond, hidden, 2 * latent_dim)
        self.decoder = mlp(latent_dim + n_cond, hidden, 2 * n_in)
        self.latent_dim = latent_dim
        self.bounds = (float(min_logvar), float(max_logvar))

    @staticmethod
    def _join(a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return a if cond is None else torch.cat([a, cond], dim=-1)

    def encode(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of ``z`` for flattened windows ``x``."""
        mu, logvar = self.encoder(self._join(x, cond)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)

    def decode(
        self, z: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder mean and (soft-bounded) log-variance of the flattened window."""
        mean, logvar = self.decoder(self._join(z, cond)).chunk(2, dim=-1)
        return mean, soft_bound(logvar, *self.bounds)

    def neg_elbo(
        self, x: torch.Tensor, cond: torch.Tensor | None, beta: float, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``reconstruction NLL + beta * KL`` and the posterior mean.

        With ``sample`` False the reconstruction is evaluated at the posterior mean, which makes
        the figure deterministic (validation, anomaly scores).
        """
        mu, logvar = self.encode(x, cond)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        mean, dec_logvar = self.decode(z, cond)
        return gaussian_nll_sum(x, mean, dec_logvar) + beta * gaussian_kl(mu, logvar), mu


class HierarchicalVAE(nn.Module):
    """Global latent over the window, local latents per chunk, chunk decoder.

    Args:
        window: bars per window ``W`` (a multiple of ``chunk``).
        n_features: features per bar ``F``.
        chunk: bars per sub-window.
        hidden: hidden width.
        global_dim: global latent width.
        local_dim: local latent width per chunk.
        min_logvar, max_logvar: soft bounds of the decoder's log-variance.
    """

    def __init__(
        self,
        window: int,
        n_features: int,
        chunk: int,
        hidden: int,
        global_dim: int,
        local_dim: int,
        min_logvar: float = -6.0,
        max_logvar: float = 2.0,
    ) -> None:
        super().__init__()
        self.n_chunks = window // chunk
        self.chunk_in = chunk * n_features
        self.global_encoder = mlp(window * n_features, hidden, 2 * global_dim)
        self.local_encoder = mlp(self.chunk_in + global_dim, hidden, 2 * local_dim)
        self.decoder = mlp(global_dim + local_dim + self.n_chunks, hidden, 2 * self.chunk_in)
        self.register_buffer("positions", torch.eye(self.n_chunks), persistent=False)
        self.bounds = (float(min_logvar), float(max_logvar))

    def encode(
        self, x: torch.Tensor, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``z_g, mu_g, logvar_g`` (B, G) and ``z_l, mu_l, logvar_l`` (B, K, L)."""
        b = x.shape[0]
        mu_g, lv_g = self.global_encoder(x).chunk(2, dim=-1)
        lv_g = lv_g.clamp(-12.0, 6.0)
        z_g = mu_g + torch.randn_like(mu_g) * torch.exp(0.5 * lv_g) if sample else mu_g
        chunks = x.reshape(b, self.n_chunks, self.chunk_in)
        ctx = z_g[:, None].expand(b, self.n_chunks, -1)
        mu_l, lv_l = self.local_encoder(torch.cat([chunks, ctx], dim=-1)).chunk(2, dim=-1)
        lv_l = lv_l.clamp(-12.0, 6.0)
        z_l = mu_l + torch.randn_like(mu_l) * torch.exp(0.5 * lv_l) if sample else mu_l
        return z_g, mu_g, lv_g, z_l, mu_l, lv_l

    def decode(self, z_g: torch.Tensor, z_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened window mean and log-variance from the global and the local latents."""
        b = z_g.shape[0]
        pos = self.positions[None].expand(b, -1, -1)
        inp = torch.cat([z_g[:, None].expand(b, self.n_chunks, -1), z_l, pos], dim=-1)
        mean, logvar = self.decoder(inp).chunk(2, dim=-1)
        return mean.reshape(b, -1), soft_bound(logvar, *self.bounds).reshape(b, -1)

    def neg_elbo(
        self, x: torch.Tensor, beta: float, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample negative ELBO, the global posterior mean and the local posterior means."""
        z_g, mu_g, lv_g, z_l, mu_l, lv_l = self.encode(x, sample)
        mean, logvar = self.decode(z_g, z_l)
        kl = gaussian_kl(mu_g, lv_g) + gaussian_kl(mu_l, lv_l).sum(dim=-1)
        return gaussian_nll_sum(x, mean, logvar) + beta * kl, mu_g, mu_l


@dataclass
class VAEConfig(WindowModelConfig):
    """``WindowModelConfig`` plus the VAE's latent and likelihood settings."""

    window: int = 16
    """Bars per window."""
    hidden_size: int = 64
    """Hidden width of encoder and decoder."""
    latent_dim: int = 4
    """Latent width (the global latent for ``hvae``)."""
    beta: float = 1.0
    """Weight of the KL term (1: the ELBO; > 1: beta-VAE, Higgins et al. 2017)."""
    kl_warmup_epochs: int = 10
    """Epochs over which the training KL weight rises linearly from ``beta / n`` to ``beta``.

    KL annealing (Bowman et al. 2016) avoids posterior collapse: with a learned decoder variance,
    explaining every window as noise is a local optimum the latents never leave otherwise.
    Validation, early stopping, online steps and anomaly scores always use the full ``beta``."""
    min_logvar: float = -6.0
    """Soft lower bound of the decoder's log-variance (scaled units)."""
    max_logvar: float = 2.0
    """Soft upper bound of the decoder's log-variance."""


class _VAEBase(WindowModelPredictor):
    """What the three VAEs share: config checks, encoder-style ``predict``, reconstruction."""

    config_class = VAEConfig
    needs_targets = False

    def _config_checks(self) -> list[tuple[str, bool, str]]:
        c = self.config
        return [
            *super()._config_checks(),
            ("latent_dim", isinstance(c.latent_dim, int) and c.latent_dim >= 1, "an int >= 1"),
            ("beta", c.beta >= 0, ">= 0"),
            ("kl_warmup_epochs", c.kl_warmup_epochs >= 0, ">= 0"),
            ("max_logvar", c.max_logvar > c.min_logvar, "> min_logvar"),
        ]

    @property
    def target_delay(self) -> int:
        """Encoders need no future: a window's block is known at its last bar."""
        return 0

    @property
    def _beta(self) -> float:
        """KL weight of the current step: annealed during ``fit``'s first epochs, else ``beta``."""
        c = self.config
        epoch = self._fit_epoch
        if self.net is None or not self.net.training or epoch is None or c.kl_warmup_epochs < 1:
            return float(c.beta)
        return float(c.beta) * min(1.0, (epoch + 1) / c.kl_warmup_epochs)

    @property
    def n_in(self) -> int:
        """Inputs of the flattened window ``W * F``."""
        return self.window * len(self.feature_names)

    def _latent_columns(self) -> list[str]:
        return [f"latent_{i}" for i in range(self.config.latent_dim)]

    def _extra_metrics(self, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
        recon = self._reconstruct_scaled(x_val)
        return {
            "val_recon_mse": float(np.mean((recon - x_val) ** 2)),
            "val_anomaly_mean": float(np.mean(self._forward_batched(x_val)[:, self._anomaly_col])),
        }

    @property
    def _anomaly_col(self) -> int:
        return self.block_columns().index("anomaly")

    def predict(self, window: np.ndarray) -> Encoding:
        """Latent (posterior mean) and anomaly score of raw ``(W, F)`` or ``(B, W, F)`` windows.

        Returns:
            ``Encoding(latent (B, latent_dim), score (B,))`` float32.
        """
        block = self._block_for_windows(window)
        latent = block[:, : self.config.latent_dim]
        return Encoding(latent, block[:, self._anomaly_col])

    def reconstruct(self, window: np.ndarray) -> np.ndarray:
        """Decoder mean at the posterior mean, in data units, shaped like the input batch."""
        from predictors.base import as_window_batch

        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: reconstruct called before fit or load")
        raw = as_window_batch(window, len(self.feature_names), self.window)
        x = self.feature_scaler.transform(raw)
        return self.feature_scaler.inverse_mean(self._reconstruct_scaled(x))

    @torch.no_grad()
    def _reconstruct_scaled(self, x: np.ndarray) -> np.ndarray:
        assert self.net is not None
        self.net.eval()
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)
        return self._decode_at_mean(xt).reshape(x.shape).cpu().numpy()

    def _decode_at_mean(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_predictor("vae")
class MarketVAE(_VAEBase):
    """VAE of market windows: latent representation and anomaly score as observation blocks.

    Args:
        **config: ``VAEConfig`` fields.

    Example:
        >>> vae = MarketVAE(window=16, latent_dim=4)  # doctest: +SKIP
        >>> vae.fit((features, None))  # doctest: +SKIP
        >>> latent, anomaly = vae.predict(features[-16:])  # doctest: +SKIP
    """

    version = 1

    def block_columns(self) -> list[str]:
        """``latent_0 .. latent_{d-1}``, ``anomaly``."""
        return [*self._latent_columns(), "anomaly"]

    def _build_net(self) -> WindowVAE:
        c = self.config
        return WindowVAE(self.n_in, 0, c.hidden_size, c.latent_dim, c.min_logvar, c.max_logvar)

    def _per_sample_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, WindowVAE)
        return self.net.neg_elbo(x.flatten(1), None, self._beta, self.net.training)[0]

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, WindowVAE)
        score, mu = self.net.neg_elbo(x.flatten(1), None, self.config.beta, sample=False)
        return torch.cat([mu, score[:, None]], dim=-1)

    def _decode_at_mean(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, WindowVAE)
        mu, _ = self.net.encode(x.flatten(1))
        return self.net.decode(mu)[0]


@dataclass
class ConditionalVAEConfig(VAEConfig):
    """``VAEConfig`` plus the regime condition."""

    regime_names: tuple[str, ...] = ()
    """Names of the regime labels (index = label); empty: ``regime0 ..``."""
    n_regimes: int = 0
    """Number of regimes; 0: one more than the largest training label (or len(regime_names))."""
    target: str = ""
    """Target column holding the integer regime label; empty: the first target column."""


@register_predictor("cvae")
class ConditionalMarketVAE(_VAEBase):
    """VAE conditioned on a regime label; generates synthetic windows of a chosen regime.

    Fit with ``targets`` holding the integer regime label of each bar (the label at bar ``t``
    conditions the window ending at ``t``), e.g. ``MarketDataset.regimes``.

    Args:
        **config: ``ConditionalVAEConfig`` fields.
    """

    config_class = ConditionalVAEConfig
    needs_targets = True
    version = 1

    @property
    def regime_names(self) -> list[str]:
        """Regime names in label order (after ``fit`` or ``load``)."""
        return [str(n) for n in self.state.get("classes", [])]

    def block_columns(self) -> list[str]:
        """``latent_i``, ``anomaly``, ``p_{regime}`` (posterior of each regime given the window)."""
        return [*self._latent_columns(), "anomaly", *(f"p_{n}" for n in self.regime_names)]

    def _target_column(self) -> int:
        name = self.config.target
        if not name:
            return 0
        if name not in self.target_names:
            raise DataError(f"predictor 'cvae': target column {name!r} not in {self.target_names}")
        return self.target_names.index(name)

    def _labels_at(self, targets: np.ndarray, rows: np.ndarray, n: int | None) -> np.ndarray:
        if targets.shape[1] == 0:
            raise DataError("predictor 'cvae': targets need a regime label column")
        lab = targets[rows, self._target_column()]
        bad = (lab != np.round(lab)) | (lab < 0) | ((lab >= n) if n is not None else False)
        if np.any(bad):
            i = int(np.argmax(bad))
            want = "integers >= 0" if n is None else f"integers in [0, {n})"
            raise DataError(
                f"predictor 'cvae': regime label {lab[i]} at row {int(rows[i])}; expected {want}"
            )
        return lab.astype(np.int64)

    def _fit_targets(self, targets: np.ndarray, rows: np.ndarray) -> None:
        c = self.config
        labels = self._labels_at(targets, rows, None)
        n = max(c.n_regimes, len(c.regime_names), int(labels.max()) + 1)
        names = list(c.regime_names) or [f"regime{k}" for k in range(n)]
        if len(names) < n:
            raise DataError(f"predictor 'cvae': {len(names)} regime_names for labels up to {n - 1}")
        counts = np.bincount(labels, minlength=n).astype(np.float64)
        # Laplace smoothing keeps log prior finite for a regime absent from the training split.
        self.state["classes"] = names
        self.state["prior"] = ((counts + 1.0) / (counts.sum() + n)).tolist()

    def _sample_targets(self, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self._labels_at(targets, rows, len(self.regime_names)).astype(np.float32)[:, None]

    def _build_net(self) -> WindowVAE:
        c = self.config
        k = len(self.regime_names)
        return WindowVAE(self.n_in, k, c.hidden_size, c.latent_dim, c.min_logvar, c.max_logvar)

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.long(), len(self.regime_names)).to(torch.float32)

    def _per_sample_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, WindowVAE)
        cond = self._onehot(y[:, 0])
        return self.net.neg_elbo(x.flatten(1), cond, self._beta, self.net.training)[0]

    def _all_regimes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative ELBO ``(B, K)`` and posterior means ``(B, K, d)`` under every regime."""
        assert isinstance(self.net, WindowVAE)
        flat = x.flatten(1)
        scores, mus = [], []
        for k in range(len(self.regime_names)):
            cond = self._onehot(torch.full((len(flat),), k, device=x.device))
            s, mu = self.net.neg_elbo(flat, cond, self.config.beta, sample=False)
            scores.append(s)
            mus.append(mu)
        return torch.stack(scores, dim=1), torch.stack(mus, dim=1)

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        scores, mus = self._all_regimes(x)
        log_prior = torch.log(torch.as_tensor(self.state["prior"], device=x.device))
        joint = log_prior - scores
        log_evidence = torch.logsumexp(joint, dim=1)
        posterior = torch.exp(joint - log_evidence[:, None])
        best = posterior.argmax(dim=1)
        latent = mus[torch.arange(len(x), device=x.device), best]
        return torch.cat([latent, -log_evidence[:, None], posterior], dim=-1)

    def _decode_at_mean(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, WindowVAE)
        scores, _ = self._all_regimes(x)
        cond = self._onehot(scores.argmin(dim=1))
        mu, _ = self.net.encode(x.flatten(1), cond)
        return self.net.decode(mu, cond)[0]

    def _regime_index(self, regime: int | str) -> int:
        names = self.regime_names
        if isinstance(regime, str):
            if regime not in names:
                raise DataError(f"generate: unknown regime {regime!r}; known: {names}")
            return names.index(regime)
        if not 0 <= int(regime) < len(names):
            raise DataError(f"generate: regime {regime} outside [0, {len(names)})")
        return int(regime)

    @torch.no_grad()
    def generate(self, regime: int | str, n: int, seed: int = 0) -> np.ndarray:
        """Draw ``n`` synthetic windows of a regime: ``z ~ N(0, I)``, ``x ~ p(x | z, regime)``.

        Args:
            regime: label or name.
            n: windows to draw.
            seed: seed of the draws (same seed, same windows).

        Returns:
            ``(n, W, F)`` float64 windows in data units (the training features' units).
        """
        if self.net is None:
            raise DataError("predictor 'cvae': generate called before fit or load")
        assert isinstance(self.net, WindowVAE)
        k = self._regime_index(regime)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(int(n), self.config.latent_dim, generator=gen).to(self.device)
        cond = self._onehot(torch.full((int(n),), k, device=self.device))
        self.net.eval()
        mean, logvar = self.net.decode(z, cond)
        eps = torch.randn(mean.shape, generator=gen).to(self.device)
        x = (mean + torch.exp(0.5 * logvar) * eps).cpu().numpy()
        x = x.reshape(int(n), self.window, len(self.feature_names))
        return self.feature_scaler.inverse_mean(x)


@dataclass
class HierarchicalVAEConfig(VAEConfig):
    """``VAEConfig`` (``latent_dim`` is the global latent) plus the local time scale."""

    chunk: int = 4
    """Bars per sub-window of a local latent (``window`` must be a multiple)."""
    local_dim: int = 2
    """Width of each local latent."""


@register_predictor("hvae")
class HierarchicalMarketVAE(_VAEBase):
    """VAE with a global latent over the window and local latents over sub-windows.

    Args:
        **config: ``HierarchicalVAEConfig`` fields.
    """

    config_class = HierarchicalVAEConfig
    version = 1

    def _config_checks(self) -> list[tuple[str, bool, str]]:
        c = self.config
        return [
            *super()._config_checks(),
            ("chunk", isinstance(c.chunk, int) and c.chunk >= 1, "an int >= 1"),
            ("local_dim", isinstance(c.local_dim, int) and c.local_dim >= 1, "an int >= 1"),
            (
                "window",
                isinstance(c.chunk, int) and c.chunk >= 1 and c.window % c.chunk == 0,
                f"a multiple of chunk {c.chunk}",
            ),
        ]

    @property
    def n_chunks(self) -> int:
        """Sub-windows per window."""
        return self.window // self.config.chunk

    def block_columns(self) -> list[str]:
        """``latent_i`` (global), ``local_i`` (newest chunk), ``anomaly``."""
        local = [f"local_{i}" for i in range(self.config.local_dim)]
        return [*self._latent_columns(), *local, "anomaly"]

    def _build_net(self) -> HierarchicalVAE:
        c = self.config
        return HierarchicalVAE(
            c.window,
            len(self.feature_names),
            c.chunk,
            c.hidden_size,
            c.latent_dim,
            c.local_dim,
            c.min_logvar,
            c.max_logvar,
        )

    def _per_sample_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, HierarchicalVAE)
        return self.net.neg_elbo(x.flatten(1), self._beta, self.net.training)[0]

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, HierarchicalVAE)
        score, mu_g, mu_l = self.net.neg_elbo(x.flatten(1), self.config.beta, sample=False)
        return torch.cat([mu_g, mu_l[:, -1], score[:, None]], dim=-1)

    @torch.no_grad()
    def local_latents(self, window: np.ndarray) -> np.ndarray:
        """``(B, n_chunks, local_dim)`` local posterior means of raw windows, oldest chunk first."""
        from predictors.base import as_window_batch

        if self.net is None:
            raise DataError("predictor 'hvae': local_latents called before fit or load")
        assert isinstance(self.net, HierarchicalVAE)
        self.net.eval()
        x = self.feature_scaler.transform(
            as_window_batch(window, len(self.feature_names), self.window)
        )
        xt = torch.as_tensor(x, device=self.device).flatten(1)
        return self.net.encode(xt, sample=False)[4].cpu().numpy()

    def _decode_at_mean(self, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(self.net, HierarchicalVAE)
        _, mu_g, _, _, mu_l, _ = self.net.encode(x.flatten(1), sample=False)
        return self.net.decode(mu_g, mu_l)[0]


def window_moments(windows: np.ndarray, column: int = 0) -> dict[str, float]:
    """Mean, standard deviation and lag-1 autocorrelation of one feature pooled over windows.

    The autocorrelation is computed within windows (pairs of consecutive bars of the same window)
    around the pooled mean, so generated and observed windows are compared the same way.
    """
    x = np.asarray(windows, dtype=np.float64)[..., column]
    mean = float(x.mean())
    d = x - mean
    var = float(np.mean(d**2))
    acf1 = float(np.mean(d[:, 1:] * d[:, :-1]) / var) if var > 0 else float("nan")
    return {"mean": mean, "std": math.sqrt(var), "acf1": acf1}


def regime_windows(
    features: np.ndarray,
    labels: np.ndarray,
    window: int,
    regime: int,
    rows: Sequence[int] | None = None,
) -> np.ndarray:
    """Windows of ``features`` lying wholly inside regime ``regime`` (all ``window`` bars)."""
    feats = np.asarray(features, dtype=np.float64)
    feats = feats[:, None] if feats.ndim == 1 else feats
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != len(feats):
        raise DataError(f"regime_windows: {len(feats)} feature rows, {len(lab)} labels")
    same = np.lib.stride_tricks.sliding_window_view(lab == regime, window)
    ends = np.flatnonzero(same.all(axis=1)) + window - 1
    if rows is not None:
        ends = np.intersect1d(ends, np.asarray(rows))
    view = np.lib.stride_tricks.sliding_window_view(feats, window, axis=0).transpose(0, 2, 1)
    return np.ascontiguousarray(view[ends - window + 1])
