"""Shared machinery of window predictors that are not Gaussian forecasters: classifiers, encoders.

``GaussianForecaster`` (``predictors.forecaster``) covers models with a Gaussian mean/variance head.
The direction classifier, the learned regime detector and the VAEs have other losses (cross-entropy,
negative ELBO) and other outputs (class probabilities, latents and anomaly scores), but the same
life cycle: scale features on the training bars only, fit with early stopping on a validation loss,
take online steps mixed with experience replay, infer in batches, save ``metadata.json`` plus a
``state_dict``. This module holds that life cycle once; a subclass says what its network is, what
its per-sample loss is and which block columns it outputs.

Alignment is the forecasters' (``predictors.windows``): sample ``t`` reads bars ``(t - W, t]``; its
supervised target (a label, or nothing for an encoder) is known at ``t + target_delay``.
"""

from __future__ import annotations

import abc
import copy
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from envs.errors import ConfigError, DataError
from predictors.base import (
    Prediction,
    Predictor,
    PredictorStats,
    SampleBatch,
    SeriesData,
    as_window_batch,
    config_from_kwargs,
    names_or_default,
    resolve_device,
)
from predictors.metadata import (
    FORMAT_VERSION,
    WEIGHTS_FILE,
    atomic_write_bytes,
    read_metadata,
    utc_timestamp,
    write_metadata,
)
from predictors.replay import ReplayBuffer, restore_rng, rng_state
from predictors.scaling import StandardScaler
from predictors.windows import as_matrix, check_finite, sample_rows, window_view


@dataclass
class WindowModelConfig:
    """Training and online-learning settings shared by window classifiers and encoders."""

    window: int = 32
    """Bars per input window ``W``; sample ``t`` reads bars ``(t - W, t]``."""
    hidden_size: int = 32
    """Width of the hidden layers."""
    dropout: float = 0.0
    """Dropout on hidden layers (training only)."""
    lr: float = 3e-3
    """Adam learning rate for ``fit``."""
    weight_decay: float = 0.0
    """Adam weight decay for ``fit``."""
    batch_size: int = 128
    """Minibatch size for ``fit``."""
    max_epochs: int = 50
    """Upper bound on passes over the training samples."""
    patience: int = 5
    """Epochs without validation improvement before early stopping."""
    max_fit_seconds: float = 0.0
    """Wall-clock cap on ``fit`` in seconds (0: none)."""
    val_fraction: float = 0.2
    """Share of the training bars (the most recent) held out for validation when no val is given."""
    grad_clip: float = 1.0
    """Gradient-norm clip for fit and online steps."""
    online_lr: float = 1e-3
    """Adam learning rate of online ``update`` steps."""
    replay_capacity: int = 4096
    """Samples kept for experience replay (seeded with the most recent training samples)."""
    replay_batch: int = 32
    """Replay samples mixed into every online step."""
    online_batch: int = 64
    """At most this many of the newest samples enter one online step."""
    monitor_decay: float = 0.02
    """Weight of the newest sample in the exponential loss average of ``stats()``."""
    degrade_factor: float = 2.0
    """``stats().degraded`` when the online loss exceeds the validation loss by this factor."""
    inference_batch: int = 8192
    """Windows per forward pass in batched inference."""
    seed: int = 0
    """Seed of initialisation, shuffling, sampling and replay draws."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:i]``."""


class WindowModelPredictor(Predictor):
    """Base of window predictors trained by minimising a per-sample loss.

    Subclasses implement ``_build_net``, ``_per_sample_loss``, ``_outputs``, ``block_columns``,
    ``target_delay``, ``predict`` (which wraps the block row into ``Prediction`` or ``Encoding``)
    and, when they learn from targets, ``_fit_targets`` / ``_sample_targets``.

    Args:
        **config: fields of ``config_class``.
    """

    config_class: ClassVar[type] = WindowModelConfig
    needs_targets: ClassVar[bool] = True
    """Whether ``fit`` needs a target matrix (encoders may be fitted on features alone)."""

    def __init__(self, **config: Any) -> None:
        self.config = config_from_kwargs(self.config_class, self.kind or "window model", config)
        self._validate_config()
        self.device = resolve_device(self.config.device)
        self.net: nn.Module | None = None
        self.feature_names: list[str] = []
        self.target_names: list[str] = []
        self.feature_scaler = StandardScaler()
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        """Per-epoch ``epoch, train_loss, val_loss`` of the last ``fit`` (not persisted)."""
        # Epoch index while ``fit`` trains (None otherwise), for schedules such as KL annealing.
        self._fit_epoch: int | None = None
        # JSON-ready values fitted on the training data besides the scaler (thresholds, classes).
        self.state: dict[str, Any] = {}
        self._reset_online()

    # --- config -----------------------------------------------------------------------------
    def _config_checks(self) -> list[tuple[str, bool, str]]:
        """``(field, ok, expected)`` checks; subclasses extend the list."""
        c = self.config
        return [
            ("window", isinstance(c.window, int) and c.window >= 1, "an int >= 1"),
            ("hidden_size", isinstance(c.hidden_size, int) and c.hidden_size >= 1, ">= 1"),
            ("dropout", 0.0 <= c.dropout < 1.0, "in [0, 1)"),
            ("lr", c.lr > 0, "> 0"),
            ("online_lr", c.online_lr >= 0, ">= 0"),
            ("batch_size", c.batch_size >= 1, ">= 1"),
            ("max_epochs", c.max_epochs >= 1, ">= 1"),
            ("patience", c.patience >= 1, ">= 1"),
            ("val_fraction", 0.0 < c.val_fraction < 1.0, "in (0, 1)"),
            ("grad_clip", c.grad_clip > 0, "> 0"),
            ("replay_capacity", c.replay_capacity >= 1, ">= 1"),
            ("replay_batch", c.replay_batch >= 0, ">= 0"),
            ("online_batch", c.online_batch >= 1, ">= 1"),
            ("monitor_decay", 0.0 < c.monitor_decay <= 1.0, "in (0, 1]"),
            ("degrade_factor", c.degrade_factor >= 1.0, ">= 1"),
            ("inference_batch", c.inference_batch >= 1, ">= 1"),
        ]

    def _validate_config(self) -> None:
        kind = self.kind or "window model"
        for name, ok, want in self._config_checks():
            if not ok:
                raise ConfigError(
                    f"predictor {kind!r}: config field {name!r} = "
                    f"{getattr(self.config, name)!r}, expected {want}"
                )

    # --- Predictor properties -----------------------------------------------------------------
    @property
    def window(self) -> int:
        """Bars in one input window."""
        return int(self.config.window)

    @property
    def fitted(self) -> bool:
        """Whether the network exists (after ``fit`` or ``load``)."""
        return self.net is not None

    @property
    def label_width(self) -> int:
        """Columns of one sample's supervised target (0 for unconditional encoders)."""
        return 1 if self.needs_targets else 0

    # --- hooks ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _build_net(self) -> nn.Module:
        """The network for ``len(self.feature_names)`` features (after names and state are set)."""

    @abc.abstractmethod
    def _per_sample_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B,)`` loss of scaled windows ``x (B, W, F)`` and sample targets ``y (B, L)``.

        In eval mode (``self.net.training`` False) the loss must be deterministic: it is the
        validation criterion of early stopping and the online monitor's score.
        """

    @abc.abstractmethod
    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, len(block_columns()))`` block values for scaled windows ``x`` (eval mode)."""

    def _fit_targets(self, targets: np.ndarray, rows: np.ndarray) -> None:
        """Fit target-derived state (thresholds, class lists) on the training samples ``rows``."""

    def _sample_targets(self, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), label_width)`` float32 supervised targets of samples ``rows``."""
        return np.zeros((len(rows), 0), dtype=np.float32)

    def _extra_metrics(self, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
        """Model-specific validation metrics after the fit (accuracy, reconstruction error ...)."""
        return {}

    def _check_names(self) -> None:
        """Subclasses check the feature columns they rely on (after names are set)."""

    # --- data ---------------------------------------------------------------------------------
    def _as_series(
        self, data: SeriesData | tuple[np.ndarray, np.ndarray | None], what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(data, tuple) or len(data) != 2:
            raise DataError(f"{what}: expected (features, targets), got {type(data).__name__}")
        feats = as_matrix(data[0], f"{what} features")
        if data[1] is None:
            if self.needs_targets:
                raise DataError(f"{what}: predictor {self.kind!r} needs targets")
            targs = np.zeros((len(feats), 0))
        else:
            targs = as_matrix(data[1], f"{what} targets")
        if feats.shape[0] != targs.shape[0]:
            raise DataError(
                f"{what}: features have {feats.shape[0]} rows but targets have {targs.shape[0]}"
            )
        check_finite(feats, f"{what} features", self.feature_names or None)
        check_finite(targs, f"{what} targets", self.target_names or None)
        return feats, targs

    def _check_width(self, features: np.ndarray, what: str) -> None:
        if features.shape[-1] != len(self.feature_names):
            raise DataError(
                f"{what}: {features.shape[-1]} feature columns, the predictor was fitted on "
                f"{len(self.feature_names)} ({self.feature_names})"
            )

    def samples(
        self, features: np.ndarray, targets: np.ndarray | None, rows: np.ndarray
    ) -> SampleBatch:
        """Raw windows ending at ``rows`` and their supervised targets (labels, or none)."""
        feats = as_matrix(features, "features")
        targs = np.zeros((len(feats), 0)) if targets is None else as_matrix(targets, "targets")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (
            rows.min() < self.window - 1 or rows.max() + self.target_delay >= len(targs)
        ):
            raise DataError(
                f"samples: rows must lie in [{self.window - 1}, "
                f"{len(targs) - 1 - self.target_delay}]"
            )
        windows = window_view(feats, self.window)[rows - (self.window - 1)]
        return SampleBatch(np.ascontiguousarray(windows), self._sample_targets(targs, rows))

    # --- fit ----------------------------------------------------------------------------------
    def fit(
        self,
        train: SeriesData | tuple[np.ndarray, np.ndarray | None],
        val: SeriesData | tuple[np.ndarray, np.ndarray | None] | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Fit from scratch with early stopping on the validation loss.

        Args:
            train: ``(features (T, F), targets (T, K))``; encoders accept ``targets=None``.
            val: a later chronological slice; when None the last ``val_fraction`` of ``train``'s
                bars are held out (their windows may read earlier bars).
            feature_names: names of the ``F`` feature columns (stored in the metadata).
            target_names: names of the ``K`` target columns.

        Returns:
            ``val_loss``, ``train_loss``, ``epochs``, ``best_epoch``, ``fit_seconds``,
            ``n_train``, ``n_val`` and the model's own validation metrics.
        """
        t0 = time.perf_counter()
        if isinstance(train, tuple) and len(train) == 2:
            n_f = as_matrix(train[0], "train features").shape[1]
            self.feature_names = names_or_default(feature_names, n_f, "f", "feature_names")
            if train[1] is not None:
                n_k = as_matrix(train[1], "train targets").shape[1]
                self.target_names = names_or_default(target_names, n_k, "y", "target_names")
        feats, targs = self._as_series(train, "train")
        self._check_names()
        delay = self.target_delay
        if val is None:
            split = round(len(feats) * (1.0 - self.config.val_fraction))
            train_rows = sample_rows(len(feats), self.window, delay, 0, split)
            val_rows = sample_rows(len(feats), self.window, delay, split, len(feats))
            val_feats, val_targs = feats, targs
            scaler_rows = slice(0, split)
        else:
            val_feats, val_targs = self._as_series(val, "val")
            self._check_width(val_feats, "val")
            if val_targs.shape[1] != targs.shape[1]:
                raise DataError(
                    f"val: {val_targs.shape[1]} target columns, train has {targs.shape[1]}"
                )
            train_rows = sample_rows(len(feats), self.window, delay)
            val_rows = sample_rows(len(val_feats), self.window, delay)
            scaler_rows = slice(0, len(feats))
        min_train = max(self.config.batch_size // 2, 8)
        if len(train_rows) < min_train or len(val_rows) < 2:
            raise DataError(
                f"train: {len(train_rows)} training and {len(val_rows)} validation samples with "
                f"window {self.window}; need at least {min_train} and 2 — give more bars"
            )
        self.feature_scaler = StandardScaler().fit(feats[scaler_rows], "train features")
        self.state = {}
        self._fit_targets(targs, train_rows)
        x_train = window_view(self.feature_scaler.transform(feats), self.window)
        x_val = window_view(self.feature_scaler.transform(val_feats), self.window)
        i_train = train_rows - (self.window - 1)
        i_val = val_rows - (self.window - 1)
        y_train = self._sample_targets(targs, train_rows)
        y_val = self._sample_targets(val_targs, val_rows)

        c = self.config
        rng = np.random.default_rng(c.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.net = self._build_net().to(self.device)
            opt = torch.optim.Adam(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
            best_loss, best_state, best_epoch, epochs, bad = math.inf, None, 0, 0, 0
            train_loss = math.nan
            self.history = []
            for epoch in range(c.max_epochs):
                self._fit_epoch = epoch
                self.net.train()
                order = rng.permutation(len(i_train))
                losses = []
                for start in range(0, len(order), c.batch_size):
                    b = order[start : start + c.batch_size]
                    losses.append(self._step(opt, x_train[i_train[b]], y_train[b]))
                train_loss = float(np.mean(losses))
                epochs = epoch + 1
                val_loss = float(np.mean(self._eval_losses(x_val[i_val], y_val)))
                self.history.append(
                    {"epoch": float(epochs), "train_loss": train_loss, "val_loss": val_loss}
                )
                if val_loss < best_loss - 1e-6:
                    best_loss, best_epoch, bad = val_loss, epochs, 0
                    best_state = copy.deepcopy(self.net.state_dict())
                else:
                    bad += 1
                if bad >= c.patience:
                    break
                if c.max_fit_seconds > 0 and time.perf_counter() - t0 > c.max_fit_seconds:
                    break
            self._fit_epoch = None
            if best_state is None:
                raise DataError(f"predictor {self.kind!r}: validation loss is not finite")
            self.net.load_state_dict(best_state)
            self.net.eval()
        self.metrics = {
            "val_loss": float(best_loss),
            "train_loss": train_loss,
            "epochs": float(epochs),
            "best_epoch": float(best_epoch),
            "n_train": float(len(i_train)),
            "n_val": float(len(i_val)),
        }
        self.metrics.update(self._extra_metrics(np.asarray(x_val[i_val]), y_val))
        self.metrics["fit_seconds"] = time.perf_counter() - t0
        self._reset_online()
        # Seed the replay buffer with the most recent fitted samples, so early online steps
        # rehearse what the fit learnt instead of overfitting to a handful of new bars.
        cap = c.replay_capacity
        self.replay.push(
            np.concatenate([x_train[i_train[-cap:]], x_val[i_val[-cap:]]])[-cap:],
            np.concatenate([y_train[-cap:], y_val[-cap:]])[-cap:],
            np.ones(min(cap, len(i_train) + len(i_val)), dtype=np.float32),
        )
        return dict(self.metrics)

    def _step(self, opt: torch.optim.Optimizer, x: np.ndarray, y: np.ndarray) -> float:
        """One gradient step on scaled windows ``x`` and targets ``y``; returns the loss."""
        assert self.net is not None
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)
        yt = torch.as_tensor(np.ascontiguousarray(y), dtype=torch.float32, device=self.device)
        loss = self._per_sample_loss(xt, yt).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def _eval_losses(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample eval-mode losses of scaled windows, in batches."""
        assert self.net is not None
        self.net.eval()
        out = []
        for start in range(0, len(x), self.config.inference_batch):
            stop = start + self.config.inference_batch
            xt = torch.as_tensor(np.ascontiguousarray(x[start:stop]), device=self.device)
            yt = torch.as_tensor(np.ascontiguousarray(y[start:stop]), device=self.device)
            out.append(self._per_sample_loss(xt.float(), yt.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    @torch.no_grad()
    def _forward_batched(self, x: np.ndarray) -> np.ndarray:
        """Block values for scaled windows ``x`` (eval mode, no grad, in batches)."""
        assert self.net is not None
        self.net.eval()
        outs = []
        for start in range(0, x.shape[0], self.config.inference_batch):
            xt = torch.as_tensor(
                np.ascontiguousarray(x[start : start + self.config.inference_batch]),
                dtype=torch.float32,
                device=self.device,
            )
            outs.append(self._outputs(xt).cpu().numpy())
        if not outs:
            return np.zeros((0, len(self.block_columns())), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32)

    # --- online learning ------------------------------------------------------------------------
    def _reset_online(self) -> None:
        c = self.config
        self._online_opt: torch.optim.Optimizer | None = None
        self._online_rng = np.random.default_rng(c.seed + 1)
        self._online_gen = torch.Generator().manual_seed(c.seed + 2)
        self._stats = PredictorStats(fit_metrics=dict(getattr(self, "metrics", {})))
        n_feat = max(len(getattr(self, "feature_names", [])), 1)
        self.replay = ReplayBuffer(c.replay_capacity, c.window, n_feat, self.label_width)

    def update(self, batch: SampleBatch) -> float:
        """One online step: score the new samples, store them, learn from them plus replay.

        The new samples are scored (eval-mode loss) with the model as it is *before* this step,
        so ``stats().loss_mean`` measures out-of-sample performance.

        Args:
            batch: raw windows ``(B, W, F)`` and supervised targets ``(B, label_width)`` from
                ``samples`` (for encoders the targets may be empty).

        Returns:
            The training loss of the step.
        """
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: update called before fit or load")
        c = self.config
        windows = as_window_batch(batch.windows, len(self.feature_names), self.window)
        targets = np.asarray(batch.targets, dtype=np.float32).reshape(len(windows), -1)
        if targets.shape[1] != self.label_width:
            raise DataError(
                f"update: targets have {targets.shape[1]} columns, expected {self.label_width}"
            )
        x = self.feature_scaler.transform(windows)
        self._score(self._eval_losses(x, targets))
        x_new, y_new = x[-c.online_batch :], targets[-c.online_batch :]
        if c.replay_batch > 0 and len(self.replay) > 0:
            xr, yr, _ = self.replay.sample(c.replay_batch, self._online_rng)
            x_new = np.concatenate([x_new, xr.cpu().numpy()])
            y_new = np.concatenate([y_new, yr.cpu().numpy()])
        self.replay.push(x, targets, np.ones(len(x), dtype=np.float32))
        if self._online_opt is None:
            self._online_opt = self._make_online_optimizer()
        self.net.train()
        with torch.random.fork_rng(devices=[]):
            # Seeded sampling noise (VAEs, dropout) so that online learning is reproducible.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self._online_gen)))
            loss = self._step(self._online_opt, x_new, y_new)
        self.net.eval()
        self._stats.updates += 1
        return loss

    def _make_online_optimizer(self) -> torch.optim.Optimizer:
        assert self.net is not None
        return torch.optim.Adam(self.net.parameters(), lr=self.config.online_lr)

    def _score(self, losses: np.ndarray) -> None:
        """Fold new samples' eval losses into the exponential average of the online monitor."""
        s, a = self._stats, self.config.monitor_decay
        for value in losses.astype(np.float64):
            s.loss_mean = (
                float(value) if np.isnan(s.loss_mean) else (1 - a) * s.loss_mean + a * value
            )
        s.samples_seen += len(losses)
        ref = self.metrics.get("val_loss", math.nan)
        if np.isfinite(ref) and not np.isnan(s.loss_mean):
            # Losses may be negative (Gaussian NLL terms): compare the excess with |ref|.
            s.degraded = bool(
                s.loss_mean - ref > (self.config.degrade_factor - 1.0) * max(abs(ref), 1e-8)
            )

    def stats(self) -> PredictorStats:
        """Online loss average, update count, samples scored (``coverage_90`` is NaN here)."""
        s = copy.copy(self._stats)
        s.fit_metrics = dict(self.metrics)
        return s

    # --- inference ------------------------------------------------------------------------------
    def _block_for_windows(self, window: np.ndarray) -> np.ndarray:
        """Block rows for raw ``(W, F)`` or ``(B, W, F)`` windows."""
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: predict called before fit or load")
        x = self.feature_scaler.transform(
            as_window_batch(window, len(self.feature_names), self.window)
        )
        return self._forward_batched(x)

    def predict_block(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Block values at bars ``rows``, batched; row ``i`` reads ``(rows[i] - W, rows[i]]``."""
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: predict called before fit or load")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, len(self.block_columns())), dtype=np.float32)
        feats = as_matrix(features, "features")
        self._check_width(feats, "features")
        if rows.min() < self.window - 1 or rows.max() >= len(feats):
            raise DataError(
                f"predict_block: rows must lie in [{self.window - 1}, {len(feats) - 1}], got "
                f"[{rows.min()}, {rows.max()}]"
            )
        lo = int(rows.min()) - (self.window - 1)
        part = feats[lo : int(rows.max()) + 1]
        check_finite(part, "features", self.feature_names)
        x = window_view(self.feature_scaler.transform(part), self.window)[rows - int(rows.min())]
        return self._forward_batched(x)

    # --- persistence ----------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "format_version": FORMAT_VERSION,
            "config": self.config_dict(),
            "feature_names": list(self.feature_names),
            "target_names": list(self.target_names),
            "output_names": self.block_columns(),
            "block_columns": self.block_columns(),
            "scaler": {"features": self.feature_scaler.to_dict()},
            "state": self.state,
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
            "online": {
                "updates": self._stats.updates,
                "samples_seen": self._stats.samples_seen,
                "loss_mean": _finite_or_none(self._stats.loss_mean),
            },
            "timestamp": utc_timestamp(),
        }

    def save(self, directory: str | Path) -> None:
        """Write ``weights.pt`` (model and online-optimiser state dicts) and ``metadata.json``.

        Persists: config, names, feature scaler, fitted state (thresholds, classes), fit metrics,
        network weights, the online optimiser's state, and the online state
        (``online_state``: the replay buffer's filled slots and write position, the replay-draw
        generator and the torch generator that seeds each online step's sampling noise), so
        ``load`` followed by the same ``update``/``predict`` calls gives bit-identical outputs
        to the predictor that was never saved (issue 6). Not persisted: the online monitor
        (``stats()`` restarts). Tensors and plain values only (``weights_only`` loading).
        """
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: save called before fit")
        directory = Path(directory)
        state: dict[str, Any] = {"model": self.net.state_dict()}
        if self._online_opt is not None:
            state["online_optimizer"] = self._online_opt.state_dict()
        state["online_state"] = {
            "replay": self.replay.state_dict(),
            "rng": rng_state(self._online_rng),
            "torch_generator": self._online_gen.get_state(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
        # Metadata last: a directory with metadata.json always has matching weights.
        write_metadata(directory, self._metadata())

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> WindowModelPredictor:
        """Rebuild from ``save``; weights via ``torch.load(weights_only=True)``."""
        directory = Path(directory)
        meta = read_metadata(directory)
        if cls.kind and meta["kind"] != cls.kind:
            raise DataError(f"{directory}: saved kind {meta['kind']!r}, expected {cls.kind!r}")
        config = dict(meta["config"])
        config["device"] = device
        obj = cls(**config)
        obj.feature_names = list(meta["feature_names"])
        obj.target_names = list(meta.get("target_names", []))
        obj.feature_scaler = StandardScaler.from_dict(meta["scaler"]["features"])
        obj.state = dict(meta.get("state", {}))
        obj.metrics = {k: math.nan if v is None else float(v) for k, v in meta["metrics"].items()}
        obj._check_names()
        obj.net = obj._build_net().to(obj.device)
        path = directory / WEIGHTS_FILE
        if not path.is_file():
            raise DataError(f"{path}: weights file not found")
        state = torch.load(path, map_location=obj.device, weights_only=True)
        obj.net.load_state_dict(state["model"])
        obj.net.eval()
        obj._reset_online()
        if "online_optimizer" in state:
            obj._online_opt = obj._make_online_optimizer()
            obj._online_opt.load_state_dict(state["online_optimizer"])
        # Directories saved before the online state was persisted: replay starts empty and the
        # generators from the seed (what loading did before).
        online = state.get("online_state")
        if online is not None:
            if not isinstance(online, dict):
                raise DataError(f"{path}: online_state must be a mapping")
            obj.replay.load_state_dict(online.get("replay", {}), str(path))
            obj._online_rng = restore_rng(online.get("rng", {}), f"{path}: online rng")
            gen_state = online.get("torch_generator")
            if not isinstance(gen_state, torch.Tensor) or gen_state.dtype != torch.uint8:
                raise DataError(f"{path}: online_state.torch_generator must be a uint8 tensor")
            try:
                obj._online_gen.set_state(gen_state.cpu())
            except RuntimeError as exc:
                raise DataError(f"{path}: online_state.torch_generator: {exc}") from exc
        return obj


def _finite_or_none(value: float) -> float | None:
    """A float for strict JSON: NaN and infinities become ``null``."""
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class ClassifierConfig(WindowModelConfig):
    """``WindowModelConfig`` plus class balancing."""

    class_balance: bool = False
    """Weigh the cross-entropy by inverse training class frequency (rare classes count more)."""


class WindowClassifier(WindowModelPredictor):
    """Window classifier: cross-entropy loss, class probabilities and a confidence as its block.

    Subclasses set ``self.state["classes"]`` (class names, index = label) in ``_fit_targets`` (or
    in ``__init__``), produce integer labels in ``_sample_targets`` and build a network mapping
    ``(B, W, F)`` windows to ``(B, n_classes)`` logits.

    ``predict`` returns ``Prediction(mean=probabilities, std=sqrt(p (1 - p)))``: the mean and the
    standard deviation of each class's one-hot indicator under the predicted distribution.
    """

    config_class: ClassVar[type] = ClassifierConfig

    @property
    def class_names(self) -> list[str]:
        """Class names in label order (known after ``fit`` or ``load``)."""
        return [str(c) for c in self.state.get("classes", [])]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def block_columns(self) -> list[str]:
        """``p_{class}`` for every class, then ``confidence`` (the largest probability)."""
        return [f"p_{c}" for c in self.class_names] + ["confidence"]

    def _class_weights(self) -> torch.Tensor | None:
        weights = self.state.get("class_weights")
        if not self.config.class_balance or weights is None:
            return None
        return torch.as_tensor(weights, dtype=torch.float32, device=self.device)

    def _set_class_weights(self, labels: np.ndarray) -> None:
        counts = np.bincount(labels.astype(np.int64), minlength=self.n_classes).astype(np.float64)
        # Inverse frequency, normalised so the weights average 1 over the training samples.
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1.0) / self.n_classes, 0.0)
        self.state["class_weights"] = w.tolist()
        self.state["class_counts"] = counts.tolist()

    def _per_sample_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert self.net is not None
        logits = self.net(x)
        return F.cross_entropy(
            logits, y[:, 0].long(), weight=self._class_weights(), reduction="none"
        )

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        assert self.net is not None
        probs = torch.softmax(self.net(x), dim=-1)
        return torch.cat([probs, probs.max(dim=-1, keepdim=True).values], dim=-1)

    def _extra_metrics(self, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
        probs = self._forward_batched(x_val)[:, : self.n_classes]
        labels = y_val[:, 0].astype(np.int64)
        counts = np.asarray(self.state.get("class_counts", []), dtype=np.float64)
        majority = int(np.argmax(counts)) if counts.size else int(np.bincount(labels).argmax())
        return {
            "val_accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
            "val_majority_accuracy": float(np.mean(labels == majority)),
        }

    def predict(self, window: np.ndarray) -> Prediction:
        """Class probabilities and their indicator standard deviations for raw windows.

        Args:
            window: ``(W, F)`` or ``(B, W, F)`` raw feature windows; the last row is bar ``t``.

        Returns:
            ``Prediction(mean, std)`` each ``(B, n_classes)`` float32, classes in
            ``class_names`` order.
        """
        probs = self._block_for_windows(window)[:, : self.n_classes]
        return Prediction(probs, np.sqrt(probs * (1.0 - probs)).astype(np.float32))

    def predict_labels(self, window: np.ndarray) -> np.ndarray:
        """Most probable class index per window."""
        return self.predict(window).mean.argmax(axis=1)
