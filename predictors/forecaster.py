"""Gaussian forecaster: the shared machinery of OnlineLSTM, its GRU variant, gas and liquidity.

Reads top to bottom: config, construction, ``fit`` (early stopping on validation NLL), ``update``
(one online step with experience replay and gradient clipping, scored before it learns), batched
inference, save/load. Subclasses add features, sample weights (gas) or output weights (liquidity)
through two small hooks.

The online step is built for the bar-by-bar loop (issue 6: under 2 ms per step on one CPU
thread): replayed samples come from a preallocated tensor ring (``predictors.replay``), the
recurrent encoder back-propagates through the last ``online_bptt`` bars only (truncated BPTT; the
forward and hence the scored prediction are unchanged), and ``FlatAdam`` clips and steps all
parameters as one vector (``predictors.online_optim``); a GRU stack runs that step through
``predictors.gru``'s fused kernel. The bar-by-bar case (one new sample per step) takes short
paths that compute the same bits with fewer operations: step-batch buffers instead of
``torch.cat``, a one-sample monitor update and replay push, a direct ``_VF.lstm`` call
(``predictors.nets``); tests/test_predictor_fastpaths.py pins each to its general path.
``fit`` is plain full-window training.

Alignment (see ``predictors.windows``): sample ``t`` reads bars ``(t - W, t]`` and targets
``y[t + h]`` for every ``h`` in ``horizons``.
"""

from __future__ import annotations

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
from predictors.nets import RecurrentGaussianNet, gaussian_nll
from predictors.online_optim import FlatAdam
from predictors.replay import ReplayBuffer, restore_rng, rng_state
from predictors.scaling import StandardScaler
from predictors.windows import (
    as_matrix,
    check_finite,
    horizon_targets,
    output_names,
    sample_rows,
    window_view,
)

Z_90 = 1.6448536269514722  # two-sided 90% interval of a standard normal


@dataclass
class ForecasterConfig:
    """Configuration shared by all Gaussian forecasters (every field is JSON-serialisable)."""

    window: int = 32
    """Bars per input window ``W``; sample ``t`` reads bars ``(t - W, t]``."""
    horizons: tuple[int, ...] = (1,)
    """Forecast horizons in bars; outputs are ``targets x horizons``."""
    hidden_size: int = 32
    """Width of the recurrent layers."""
    num_layers: int = 1
    """Recurrent layers, joined by residual skips."""
    cell: str = "lstm"
    """Recurrent cell: ``lstm`` or ``gru``."""
    dropout: float = 0.0
    """Dropout on each recurrent layer's output (training only)."""
    input_skip: bool = True
    """Feed the last bar's features straight to the head too."""
    min_var: float = 1e-4
    """Variance floor in scaled target units."""
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
    """Share of the training bars (the most recent) used for validation when no val is given."""
    grad_clip: float = 1.0
    """Gradient-norm clip for fit and online steps."""
    online_lr: float = 1e-3
    """Adam learning rate of online ``update`` steps."""
    online_scope: str = "all"
    """Parameters an online step trains: ``all``, or ``head`` (the recurrent encoder is frozen
    and run without gradients; several times cheaper per step, adapts level and uncertainty)."""
    replay_capacity: int = 4096
    """Samples kept for experience replay (seeded with the most recent training samples)."""
    replay_batch: int = 32
    """Replay samples mixed into every online step."""
    online_bptt: int = 8
    """Bars an online step back-propagates through (truncated BPTT over the most recent
    ``online_bptt`` bars of each window; 0 or >= window: the whole window). The forward still
    reads the whole window, so predictions and scores are unchanged; only the gradient of the
    recurrent weights is truncated. Recurrent networks only; ``fit`` uses the whole window."""
    online_batch: int = 64
    """At most this many of the newest samples enter one online step."""
    monitor_decay: float = 0.02
    """Weight of the newest sample in the exponential averages of ``stats()``."""
    degrade_factor: float = 2.0
    """``stats().degraded`` when the online squared-error average exceeds this x validation MSE."""
    anchor_features: tuple[str, ...] = ()
    """Per target column, a feature holding that target's current value (or ``""``): the net
    then forecasts the change from it, ``y[t+h] - feature[t]``, so persistence is its starting
    point (useful for near-random-walk series such as the gas base fee). Empty: no anchors."""
    inference_batch: int = 8192
    """Windows per forward pass in batched inference."""
    seed: int = 0
    """Seed of initialisation, shuffling, dropout and replay draws."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:i]``."""


class GaussianForecaster(Predictor):
    """Recurrent forecaster with a Gaussian mean/variance head, online updates and replay.

    Args:
        **config: fields of ``config_class`` (``ForecasterConfig`` or a subclass).
    """

    config_class: ClassVar[type] = ForecasterConfig

    def __init__(self, **config: Any) -> None:
        self.config = config_from_kwargs(self.config_class, self.kind or "forecaster", config)
        self._validate_config()
        self.device = resolve_device(self.config.device)
        self.net: RecurrentGaussianNet | None = None
        self.feature_names: list[str] = []
        self.target_names: list[str] = []
        self.feature_scaler = StandardScaler()
        self.target_scaler = StandardScaler()
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        """Per-epoch ``epoch, train_loss, val_loss, val_coverage_90`` of the last ``fit`` (not
        persisted; ``scripts/train_predictor.py`` writes it to TensorBoard)."""
        self._reset_online()

    # --- config -----------------------------------------------------------------------------
    def _validate_config(self) -> None:
        c = self.config
        kind = self.kind or "forecaster"
        checks = [
            ("window", isinstance(c.window, int) and c.window >= 1, "an int >= 1"),
            (
                "horizons",
                len(c.horizons) > 0 and all(isinstance(h, int) and h >= 1 for h in c.horizons),
                "a non-empty list of ints >= 1",
            ),
            ("hidden_size", c.hidden_size >= 1, ">= 1"),
            ("num_layers", c.num_layers >= 1, ">= 1"),
            ("cell", c.cell in ("lstm", "gru"), "'lstm' or 'gru'"),
            ("dropout", 0.0 <= c.dropout < 1.0, "in [0, 1)"),
            ("min_var", c.min_var > 0, "> 0"),
            ("lr", c.lr > 0, "> 0"),
            ("online_lr", c.online_lr >= 0, ">= 0"),
            ("online_scope", c.online_scope in ("all", "head"), "'all' or 'head'"),
            ("batch_size", c.batch_size >= 1, ">= 1"),
            ("max_epochs", c.max_epochs >= 1, ">= 1"),
            ("patience", c.patience >= 1, ">= 1"),
            ("val_fraction", 0.0 < c.val_fraction < 1.0, "in (0, 1)"),
            ("grad_clip", c.grad_clip > 0, "> 0"),
            ("replay_capacity", c.replay_capacity >= 1, ">= 1"),
            ("replay_batch", c.replay_batch >= 0, ">= 0"),
            ("online_bptt", isinstance(c.online_bptt, int) and c.online_bptt >= 0, "an int >= 0"),
            ("online_batch", c.online_batch >= 1, ">= 1"),
            ("monitor_decay", 0.0 < c.monitor_decay <= 1.0, "in (0, 1]"),
            ("inference_batch", c.inference_batch >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(
                    f"predictor {kind!r}: config field {name!r} = {getattr(c, name)!r}, "
                    f"expected {want}"
                )

    # --- Predictor properties -----------------------------------------------------------------
    @property
    def window(self) -> int:
        """Bars in one input window."""
        return int(self.config.window)

    @property
    def target_delay(self) -> int:
        """The full target vector of sample ``t`` is known at ``t + max(horizons)``."""
        return int(max(self.config.horizons))

    @property
    def fitted(self) -> bool:
        """Whether the network exists (after ``fit`` or ``load``)."""
        return self.net is not None

    @property
    def output_names(self) -> list[str]:
        """``{target}_h{h}`` in output order (horizon-major)."""
        return output_names(self.target_names, self.config.horizons)

    @property
    def n_outputs(self) -> int:
        """Targets x horizons."""
        return len(self.target_names) * len(self.config.horizons)

    def block_columns(self) -> list[str]:
        """``mean_h1, ..., std_h1, ...`` (one target) or ``{target}_mean_h1 ...`` (several)."""
        horizons = self.config.horizons
        if len(self.target_names) == 1:
            means = [f"mean_h{h}" for h in horizons]
            stds = [f"std_h{h}" for h in horizons]
        else:
            means = [f"{k}_mean_h{h}" for h in horizons for k in self.target_names]
            stds = [f"{k}_std_h{h}" for h in horizons for k in self.target_names]
        return means + stds

    # --- hooks for subclasses -----------------------------------------------------------------
    def _sample_weights(self, last_scaled: np.ndarray) -> np.ndarray:
        """Per-sample loss weights from the last bar's scaled features (default: all ones)."""
        return np.ones(last_scaled.shape[0], dtype=np.float32)

    def _output_weights(self) -> np.ndarray | None:
        """Per-output loss weights (default: none, all outputs count equally)."""
        return None

    def _check_names(self) -> None:
        """Subclasses check that the features they rely on are present (after names are set)."""

    def _resolve_anchors(self) -> None:
        """Map ``anchor_features`` to feature indices (None: no anchor for that target)."""
        anchors = tuple(self.config.anchor_features)
        self._anchor_index: list[int | None] = [None] * len(self.target_names)
        if not anchors:
            return
        if len(anchors) != len(self.target_names):
            raise ConfigError(
                f"predictor {self.kind!r}: {len(anchors)} anchor_features for "
                f"{len(self.target_names)} targets {self.target_names}"
            )
        for k, name in enumerate(anchors):
            if name:
                if name not in self.feature_names:
                    raise DataError(
                        f"predictor {self.kind!r}: anchor feature {name!r} not among the "
                        f"features {self.feature_names}"
                    )
                self._anchor_index[k] = self.feature_names.index(name)

    def _anchor(self, last_raw: np.ndarray) -> np.ndarray:
        """``(B, O)`` offsets in data units from the last bar's raw features (0 without anchor).

        Output ``h * K + k`` (horizon-major) holds feature ``_anchor_index[k]`` of the last bar,
        or 0. One gather into zeros (the column plan is made once per anchor layout): the same
        float64 values as stacking the columns and tiling them over the horizons, in two array
        operations instead of a dozen (issue 6: this runs on every online step).
        """
        n_out = len(self.target_names) * len(self.config.horizons)
        out = np.zeros((len(last_raw), n_out))
        plan = self._anchor_plan()
        if plan is not None:
            out[:, plan[0]] = last_raw[:, plan[1]]
        return out

    def _anchor_plan(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(output columns, feature columns)`` of the anchored outputs, None without anchors."""
        index = tuple(getattr(self, "_anchor_index", None) or ())
        key = (index, len(self.config.horizons))
        cached = self.__dict__.get("_anchor_plan_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        pairs = [
            (h * len(index) + k, j)
            for h in range(len(self.config.horizons))
            for k, j in enumerate(index)
            if j is not None
        ]
        plan = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else None
        self._anchor_plan_cache = (key, plan)
        return plan

    # --- data handling ------------------------------------------------------------------------
    def _validated(self, data: SeriesData, what: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(data, tuple) or len(data) != 2:
            raise DataError(f"{what}: expected (features, targets), got {type(data).__name__}")
        feats = as_matrix(data[0], f"{what} features")
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

    def samples(self, features: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> SampleBatch:
        """Raw windows ending at ``rows`` and their targets ``y[t + h]`` (data units)."""
        feats = as_matrix(features, "features")
        targs = as_matrix(targets, "targets")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (
            rows.min() < self.window - 1 or rows.max() + self.target_delay >= len(targs)
        ):
            raise DataError(
                f"samples: rows must lie in [{self.window - 1}, "
                f"{len(targs) - 1 - self.target_delay}]"
            )
        windows = window_view(feats, self.window)[rows - (self.window - 1)]
        return SampleBatch(
            np.ascontiguousarray(windows), horizon_targets(targs, rows, self.config.horizons)
        )

    # --- fit ----------------------------------------------------------------------------------
    def fit(
        self,
        train: SeriesData,
        val: SeriesData | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        target_names: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Fit from scratch with early stopping on the validation Gaussian NLL.

        Args:
            train: ``(features (T, F), targets (T, K))``; only samples whose targets lie inside
                ``train`` are used.
            val: a later chronological slice; when None the last ``val_fraction`` of ``train``'s
                bars are held out (their windows may read earlier bars, their targets never
                enter training).
            feature_names: names of the ``F`` feature columns (stored in the metadata).
            target_names: names of the ``K`` target columns.

        Returns:
            Training metrics: ``val_loss``, ``val_mse`` (scaled units), ``val_coverage_90``,
            ``train_loss``, ``epochs``, ``best_epoch``, ``fit_seconds``, ``n_train``, ``n_val``.
        """
        t0 = time.perf_counter()
        if isinstance(train, tuple) and len(train) == 2:
            # Names first, so that errors about bad values can name the column.
            n_f = as_matrix(train[0], "train features").shape[1]
            n_k = as_matrix(train[1], "train targets").shape[1]
            self.feature_names = names_or_default(feature_names, n_f, "f", "feature_names")
            self.target_names = names_or_default(target_names, n_k, "y", "target_names")
        feats, targs = self._validated(train, "train")
        self._check_names()
        self._resolve_anchors()
        if val is None:
            split = round(len(feats) * (1.0 - self.config.val_fraction))
            train_rows = sample_rows(len(feats), self.window, self.target_delay, 0, split)
            val_rows = sample_rows(len(feats), self.window, self.target_delay, split, len(feats))
            val_feats, val_targs = feats, targs
            scaler_rows = slice(0, split)
        else:
            val_feats, val_targs = self._validated(val, "val")
            self._check_width(val_feats, "val")
            if val_targs.shape[1] != targs.shape[1]:
                raise DataError(
                    f"val: {val_targs.shape[1]} target columns, train has {targs.shape[1]}"
                )
            train_rows = sample_rows(len(feats), self.window, self.target_delay)
            val_rows = sample_rows(len(val_feats), self.window, self.target_delay)
            scaler_rows = slice(0, len(feats))
        min_train = 8
        if len(train_rows) < min_train or len(val_rows) < 2:
            raise DataError(
                f"train: {len(train_rows)} training and {len(val_rows)} validation samples with "
                f"window {self.window} and horizons {list(self.config.horizons)}; need at least "
                f"{min_train} and 2 — give more bars"
            )

        self.feature_scaler = StandardScaler().fit(feats[scaler_rows], "train features")
        train_y = horizon_targets(targs, train_rows, self.config.horizons) - self._anchor(
            feats[train_rows]
        )
        self.target_scaler = StandardScaler().fit(train_y, "train targets")
        x_train = window_view(self.feature_scaler.transform(feats), self.window)
        x_val = window_view(self.feature_scaler.transform(val_feats), self.window)
        y_train = self.target_scaler.transform(train_y)
        y_val = self.target_scaler.transform(
            horizon_targets(val_targs, val_rows, self.config.horizons)
            - self._anchor(val_feats[val_rows])
        )
        i_train = train_rows - (self.window - 1)
        i_val = val_rows - (self.window - 1)
        w_train = self._sample_weights(x_train[i_train, -1])
        w_val = self._sample_weights(x_val[i_val, -1])

        c = self.config
        rng = np.random.default_rng(c.seed)
        out_w_t = self._out_w_tensor()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.net = self._build_net()
            opt = torch.optim.Adam(
                self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay, foreach=True
            )
            best_loss, best_state, best_epoch, epochs, bad = math.inf, None, 0, 0, 0
            train_loss = math.nan
            self.history = []
            for epoch in range(c.max_epochs):
                self.net.train()
                order = rng.permutation(len(i_train))
                losses = []
                for start in range(0, len(order), c.batch_size):
                    b = order[start : start + c.batch_size]
                    loss, _, _ = self._step(
                        opt, x_train[i_train[b]], y_train[b], w_train[b], out_w_t
                    )
                    losses.append(loss)
                train_loss = float(np.mean(losses))
                epochs = epoch + 1
                val_loss, val_coverage = self._eval_loss(x_val[i_val], y_val, w_val, out_w_t)
                self.history.append(
                    {
                        "epoch": float(epochs),
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "val_coverage_90": val_coverage,
                    }
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
            if best_state is None:
                raise DataError(
                    f"predictor {self.kind!r}: validation loss is not finite ({val_loss}); "
                    "check the data scale or lower lr"
                )
            self.net.load_state_dict(best_state)
            self.net.eval()

        mean, var = self._forward_batched(x_val[i_val])
        mse = float(np.mean((mean - y_val) ** 2))
        coverage = float(np.mean(np.abs(y_val - mean) <= Z_90 * np.sqrt(var)))
        self.metrics = {
            "val_loss": float(best_loss),
            "val_mse": mse,
            "val_coverage_90": coverage,
            "train_loss": train_loss,
            "epochs": float(epochs),
            "best_epoch": float(best_epoch),
            "fit_seconds": time.perf_counter() - t0,
            "n_train": float(len(i_train)),
            "n_val": float(len(i_val)),
        }
        self._reset_online()
        # Seed the replay buffer with the most recent fitted samples, so the first online steps
        # rehearse what the fit learnt instead of overfitting to a handful of new bars.
        x_all = np.concatenate([x_train[i_train], x_val[i_val]])[-c.replay_capacity :]
        y_all = np.concatenate([y_train, y_val])[-c.replay_capacity :]
        w_all = np.concatenate([w_train, w_val])[-c.replay_capacity :]
        self.replay.push(x_all, y_all, w_all)
        return dict(self.metrics)

    def _build_net(self) -> RecurrentGaussianNet:
        c = self.config
        return RecurrentGaussianNet(
            n_features=len(self.feature_names),
            n_outputs=self.n_outputs,
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            cell=c.cell,
            dropout=c.dropout,
            input_skip=c.input_skip,
            min_var=c.min_var,
        ).to(self.device)

    def _step(
        self,
        opt: torch.optim.Optimizer,
        x: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        out_w: torch.Tensor | None,
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One ``fit`` minibatch step; returns the loss and the pre-step (detached) mean, var."""
        assert self.net is not None
        xt = torch.as_tensor(x, device=self.device)
        yt = torch.as_tensor(y, device=self.device)
        wt = torch.as_tensor(w, device=self.device)
        mean, var = self.net(xt)
        loss = gaussian_nll(mean, var, yt, wt, out_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip, foreach=True)
        opt.step()
        return float(loss.detach()), mean.detach(), var.detach()

    def _set_training(self, training: bool) -> None:
        # Only dropout differs between train and eval mode in this network; skipping the
        # recursive mode switch when there is none saves about a millisecond per online step.
        assert self.net is not None
        if self.config.dropout > 0:
            self.net.train(training)

    @torch.inference_mode()
    def _forward_batched(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled mean and variance for scaled windows ``x`` (eval mode, inference mode, batched).

        ``torch.inference_mode`` skips autograd's version counters and views tracking as well as
        the graph; its outputs only ever leave as NumPy arrays.
        """
        assert self.net is not None
        self.net.eval()
        means, variances = [], []
        for start in range(0, x.shape[0], self.config.inference_batch):
            xt = torch.as_tensor(
                np.ascontiguousarray(x[start : start + self.config.inference_batch]),
                dtype=torch.float32,
                device=self.device,
            )
            m, v = self.net(xt)
            means.append(m.cpu().numpy())
            variances.append(v.cpu().numpy())
        if not means:
            return np.zeros((0, self.n_outputs), np.float32), np.ones(
                (0, self.n_outputs), np.float32
            )
        return np.concatenate(means), np.concatenate(variances)

    def _eval_loss(
        self, x: np.ndarray, y: np.ndarray, w: np.ndarray, out_w: torch.Tensor | None
    ) -> tuple[float, float]:
        """Validation NLL and 90% interval coverage (the coverage comes free with the forward)."""
        mean, var = self._forward_batched(x)
        coverage = float(np.mean((y - mean) ** 2 <= (Z_90**2) * var))
        with torch.no_grad():
            loss = float(
                gaussian_nll(
                    torch.as_tensor(mean),
                    torch.as_tensor(var),
                    torch.as_tensor(y),
                    torch.as_tensor(w),
                    None if out_w is None else out_w.cpu(),
                )
            )
        return loss, coverage

    # --- online learning ------------------------------------------------------------------------
    def _reset_online(self) -> None:
        c = self.config
        self._online_opt: FlatAdam | None = None
        self._online_rng = np.random.default_rng(c.seed + 1)
        self._stats = PredictorStats(fit_metrics=dict(getattr(self, "metrics", {})))
        self._covered = 0
        self._scored = 0
        n_feat = max(len(getattr(self, "feature_names", [])), 1)
        self.replay = ReplayBuffer(
            c.replay_capacity, c.window, n_feat, max(self.n_outputs, 1), self.device
        )

    def update(self, batch: SampleBatch) -> float:
        """One online step: score the new samples, store them, learn from them plus replay.

        The new samples are scored (NLL, squared error, interval coverage) with the model as it is
        *before* this step, so ``stats()`` measures genuine out-of-sample performance.

        Args:
            batch: raw windows ``(B, W, F)`` and targets ``(B, O)`` whose targets just became known.

        Returns:
            The training loss of the step.
        """
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: update called before fit or load")
        c = self.config
        windows = as_window_batch(batch.windows, len(self.feature_names), self.window)
        targets = np.asarray(batch.targets, dtype=np.float64).reshape(len(windows), -1)
        if targets.shape[1] != self.n_outputs:
            raise DataError(
                f"update: targets have {targets.shape[1]} columns, expected {self.n_outputs} "
                f"({self.output_names})"
            )
        x = self.feature_scaler.transform(windows)
        y = self.target_scaler.transform(targets - self._anchor(windows[:, -1]))
        w = self._sample_weights(x[:, -1])
        if len(x) > c.online_batch:  # older samples beyond online_batch: scored, not trained on
            m_old, v_old = self._forward_batched(x[: -c.online_batch])
            self._score(m_old, v_old, y[: -c.online_batch])
        # Learn from the newest samples plus a replay draw of older ones. The replay draw comes
        # first from the buffer as it was, then the new samples join the buffer.
        n_new = min(len(x), c.online_batch)
        # Gathered (copied) before the push below can overwrite the drawn slots.
        xb, yb, wb = self._step_batch(x[-n_new:], y[-n_new:], w[-n_new:])
        self.replay.push(x, y, w)
        if self._online_opt is None:
            self._online_opt = self._make_online_optimizer()
        self._set_training(True)
        loss, mean, var = self._online_step(xb, yb, wb)
        self._set_training(False)
        # Score the new samples with the forward pass of this step, i.e. with the weights as
        # they were before learning from them (with dropout > 0 that pass is stochastic).
        self._score(mean.cpu().numpy()[:n_new], var.cpu().numpy()[:n_new], y[-n_new:])
        self._stats.updates += 1
        return loss

    def _step_batch(
        self, x: np.ndarray, y: np.ndarray, w: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's training batch: the new samples, then a replay draw of older ones.

        Written into step buffers kept between steps (``_batch_buffers``): one copy per field
        for the new samples and one ``index_select`` per field straight into the buffer for the
        replayed ones, instead of a tensor per part and a ``torch.cat`` (issue 6: each
        allocation and dispatch counts on a sub-2 ms step). The same values as concatenating;
        inputs other than float32 (which ``torch.cat`` would promote) take that general path.
        """
        c, dev = self.config, self.device
        n_replay = c.replay_batch if c.replay_batch > 0 and len(self.replay) > 0 else 0
        # index_select: the same gather as advanced indexing at a fraction of its cost.
        idx = self.replay.sample_indices(n_replay, self._online_rng) if n_replay else None
        sources = (self.replay.windows, self.replay.targets, self.replay.weights)
        if not (x.dtype == y.dtype == w.dtype == np.float32):
            parts = [torch.as_tensor(a, device=dev) for a in (x, y, w)]
            if idx is not None:
                parts = [
                    torch.cat([p, src.index_select(0, idx)])
                    for p, src in zip(parts, sources, strict=True)
                ]
            return parts[0], parts[1], parts[2]
        batch, new_parts, old_parts = self._batch_buffers(len(x), n_replay)
        for part, arr in zip(new_parts, (x, y, w), strict=True):
            part.copy_(torch.from_numpy(arr))
        if idx is not None:
            for src, part in zip(sources, old_parts, strict=True):
                torch.index_select(src, 0, idx, out=part)
        return batch[0], batch[1], batch[2]

    def _batch_buffers(self, n_new: int, n_replay: int) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Step buffers ``(windows, targets, weights)`` for ``n_new + n_replay`` samples, with
        their new-sample and replay views (made once per batch layout; not copied or pickled).

        A buffer is rewritten by the next step; autograd has freed what it saved of the batch
        by then (``backward`` runs within the step), and no result of a step aliases it.
        """
        n_feat, n_out = len(self.feature_names), self.n_outputs
        key = (n_new, n_replay, self.window, n_feat, n_out, self.device)
        cache = self.__dict__.setdefault("_step_buffers", {})
        if key not in cache:
            n = n_new + n_replay
            batch = (
                torch.empty((n, self.window, n_feat), device=self.device),
                torch.empty((n, n_out), device=self.device),
                torch.empty(n, device=self.device),
            )
            cache.clear()  # one layout at a time (the bar-by-bar loop uses one)
            cache[key] = (batch, tuple(b[:n_new] for b in batch), tuple(b[n_new:] for b in batch))
        return cache[key]

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles rebuild the step buffers and cached plans on first use.
        state = dict(self.__dict__)
        state.pop("_step_buffers", None)
        state.pop("_anchor_plan_cache", None)
        return state

    def _online_step(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One online gradient step on scaled tensors; the loss and pre-step mean and variance.

        Costs, per issue 6's profile of the former step at one thread (5 ms): the encoder forward
        and backward over the whole window were two thirds, ``torch.optim.Adam`` plus
        ``clip_grad_norm_`` a fifth. Here the encoder back-propagates through the last
        ``online_bptt`` bars only (``online_scope="head"``: not at all) and ``FlatAdam`` clips
        and steps all parameters as one vector.
        """
        assert self.net is not None and self._online_opt is not None
        c = self.config
        if c.online_scope == "head":
            with torch.no_grad():
                z = self.net.encode(x)
            mean, var = self.net.decode(z)
        elif isinstance(self.net, RecurrentGaussianNet):
            mean, var = self.net.decode(self.net.encode(x, grad_steps=c.online_bptt))
        else:
            mean, var = self.net(x)
        loss = gaussian_nll(mean, var, y, w, self._out_w_normalised(), normalised=True)
        self._online_opt.zero_grad()
        loss.backward()
        self._online_opt.step()
        return loss.item(), mean.detach(), var.detach()

    def _make_online_optimizer(self) -> FlatAdam:
        assert self.net is not None
        if self.config.online_scope == "head" and not all(
            hasattr(self.net, attr) for attr in ("encode", "decode", "head")
        ):
            raise ConfigError(
                f"predictor {self.kind!r}: online_scope 'head' needs a network with encode, "
                f"decode and head; {type(self.net).__name__} has not"
            )
        params = self.net.head if self.config.online_scope == "head" else self.net
        return FlatAdam(
            params.parameters(), lr=self.config.online_lr, max_grad_norm=self.config.grad_clip
        )

    def _out_w_normalised(self) -> torch.Tensor | None:
        """``_out_w_tensor()`` divided by its mean as ``gaussian_nll`` does, computed once."""
        if not hasattr(self, "_out_w_norm_cache"):
            out_w = self._out_w_tensor()
            self._out_w_norm_cache = None if out_w is None else out_w / out_w.mean()
        return self._out_w_norm_cache

    def _out_w_tensor(self) -> torch.Tensor | None:
        if not hasattr(self, "_out_w_cache"):
            out_w = self._output_weights()
            self._out_w_cache = (
                None
                if out_w is None
                else torch.as_tensor(out_w, dtype=torch.float32, device=self.device)
            )
        return self._out_w_cache

    def _score(self, mean: np.ndarray, var: np.ndarray, y: np.ndarray) -> None:
        """Fold new samples' errors (scaled units) into the online monitor."""
        if len(y) == 1 and not math.isnan(self._stats.loss_mean):
            self._score_one(mean, var, y)
        else:
            self._score_samples(mean, var, y)

    def _score_samples(self, mean: np.ndarray, var: np.ndarray, y: np.ndarray) -> None:
        """``_score`` of any number of samples (the reference of ``_score_one``)."""
        err2 = (y - mean) ** 2
        nll = (0.5 * (np.log(var) + err2 / var)).mean(axis=1)
        sq = err2.mean(axis=1)
        inside = err2 <= (Z_90**2) * var
        s, a = self._stats, self.config.monitor_decay
        if np.isnan(s.loss_mean):
            s.loss_mean, s.mse_mean = float(nll[0]), float(sq[0])
            nll, sq = nll[1:], sq[1:]
        # Exponential moving average over the samples in order, in closed form:
        # m_n = (1-a)^n m_0 + sum_i a (1-a)^(n-1-i) x_i.
        n = len(nll)
        if n:
            decay = (1 - a) ** np.arange(n - 1, -1, -1)
            s.loss_mean = float((1 - a) ** n * s.loss_mean + a * np.dot(decay, nll))
            s.mse_mean = float((1 - a) ** n * s.mse_mean + a * np.dot(decay, sq))
        self._covered += int(inside.sum())
        self._scored += int(inside.size)
        s.samples_seen += len(y)
        s.coverage_90 = self._covered / self._scored
        val_mse = self.metrics.get("val_mse", math.nan)
        s.degraded = bool(
            np.isfinite(val_mse) and s.mse_mean > self.config.degrade_factor * val_mse
        )

    def _score_one(self, mean: np.ndarray, var: np.ndarray, y: np.ndarray) -> None:
        """``_score`` of a single sample once the averages have started: the bar-by-bar case.

        The same float32 NumPy arithmetic per output, with ``mean(axis=1)`` spelled as the two
        ufunc calls ``np.mean`` makes (``add.reduce``, then ``true_divide`` by the count as
        ``intp``), and the closed-form average of ``_score`` for ``n = 1`` (``(1 - a)^1 m + a
        * 1.0 * x``) in Python floats: the same float64 operations in the same order, so the
        same bits (tested), at about 60% of the general path's cost on one sample (17 -> 10 us).
        """
        err2 = (y - mean) ** 2
        if err2.dtype == np.float16:  # np.mean sums float16 in float32: the general path
            self._score_samples(mean, var, y)
            return
        count = np.intp(err2.shape[1])
        nll = np.add.reduce(0.5 * (np.log(var) + err2 / var), axis=1)
        np.true_divide(nll, count, out=nll, casting="unsafe")
        sq = np.add.reduce(err2, axis=1)
        np.true_divide(sq, count, out=sq, casting="unsafe")
        covered = int(np.count_nonzero(err2 <= (Z_90**2) * var))
        s, a = self._stats, self.config.monitor_decay
        s.loss_mean = (1 - a) * s.loss_mean + a * float(nll[0])
        s.mse_mean = (1 - a) * s.mse_mean + a * float(sq[0])
        self._covered += covered
        self._scored += err2.size
        s.samples_seen += 1
        s.coverage_90 = self._covered / self._scored
        val_mse = self.metrics.get("val_mse", math.nan)
        s.degraded = bool(
            math.isfinite(val_mse) and s.mse_mean > self.config.degrade_factor * val_mse
        )

    def stats(self) -> PredictorStats:
        """Online loss and squared-error averages, update count, running 90% coverage."""
        s = copy.copy(self._stats)
        s.fit_metrics = dict(self.metrics)
        return s

    # --- inference ------------------------------------------------------------------------------
    def predict(self, window: np.ndarray) -> Prediction:
        """Gaussian mean and standard deviation (data units, float32) for raw feature windows.

        Args:
            window: ``(W, F)`` or ``(B, W, F)``; the last row is the current bar.

        Returns:
            ``Prediction(mean, std)`` each ``(B, O)`` (``B = 1`` for a single window), outputs in
            ``output_names`` order.
        """
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: predict called before fit or load")
        raw = as_window_batch(window, len(self.feature_names), self.window)
        mean, var = self._forward_batched(self.feature_scaler.transform(raw))
        return self._unscale(mean, var, raw[:, -1])

    def _unscale(self, mean: np.ndarray, var: np.ndarray, last_raw: np.ndarray) -> Prediction:
        return Prediction(
            (self.target_scaler.inverse_mean(mean) + self._anchor(last_raw)).astype(np.float32),
            self.target_scaler.inverse_std(np.sqrt(var)).astype(np.float32),
        )

    def predict_block(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Means then standard deviations at bars ``rows``, batched (see ``block_columns``)."""
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: predict called before fit or load")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, 2 * self.n_outputs), dtype=np.float32)
        feats = as_matrix(features, "features")
        self._check_width(feats, "features")
        if rows.min() < self.window - 1 or rows.max() >= len(feats):
            raise DataError(
                f"predict_block: rows must lie in [{self.window - 1}, {len(feats) - 1}], got "
                f"[{rows.min()}, {rows.max()}]"
            )
        lo = int(rows.min()) - (self.window - 1)
        hi = int(rows.max()) + 1
        # Scaling is row-wise, so scaling only the slice that the windows read is exact.
        part = feats[lo:hi]
        check_finite(part, "features", self.feature_names)
        x = window_view(self.feature_scaler.transform(part), self.window)[rows - int(rows.min())]
        mean, var = self._forward_batched(x)
        pred = self._unscale(mean, var, feats[rows])
        return np.concatenate([pred.mean, pred.std], axis=1)

    # --- persistence ----------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "format_version": FORMAT_VERSION,
            "config": self.config_dict(),
            "feature_names": list(self.feature_names),
            "target_names": list(self.target_names),
            "output_names": self.output_names,
            "block_columns": self.block_columns(),
            "scaler": {
                "features": self.feature_scaler.to_dict(),
                "targets": self.target_scaler.to_dict(),
            },
            "metrics": {k: finite_or_none(v) for k, v in self.metrics.items()},
            "online": {
                "updates": self._stats.updates,
                "samples_seen": self._stats.samples_seen,
                "loss_mean": finite_or_none(self._stats.loss_mean),
                "coverage_90": finite_or_none(self._stats.coverage_90),
            },
            "timestamp": utc_timestamp(),
        }

    def save(self, directory: str | Path) -> None:
        """Write ``weights.pt`` (model and online state) and ``metadata.json``.

        Persists: config, names, scalers, fit metrics, network weights, the online optimiser's
        state, and the online state (``online_state``: the replay buffer's filled slots and
        write position, the replay-draw generator's state), so that
        ``load`` followed by the same ``update``/``predict`` calls gives bit-identical outputs
        to the predictor that was never saved (issue 6; dropout > 0 also draws from torch's
        global generator, which is not the predictor's to save). Not persisted: the online
        monitor (``stats()`` restarts). Everything is tensors and plain values: ``load`` reads
        it with ``torch.load(weights_only=True)``.
        """
        if self.net is None:
            raise DataError(f"predictor {self.kind!r}: save called before fit")
        directory = Path(directory)
        state: dict[str, Any] = {"model": self.net.state_dict()}
        if self._online_opt is not None:
            state["online_optimizer"] = self._online_opt.state_dict()
        state["online_state"] = self._online_state()
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
        # Metadata last: a directory with metadata.json always has matching weights.
        write_metadata(directory, self._metadata())

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> GaussianForecaster:
        """Rebuild from ``save``; weights via ``torch.load(weights_only=True)``."""
        directory = Path(directory)
        meta = read_metadata(directory)
        if cls.kind and meta["kind"] != cls.kind:
            raise DataError(f"{directory}: saved kind {meta['kind']!r}, expected {cls.kind!r}")
        config = dict(meta["config"])
        config["device"] = device
        obj = cls(**config)
        obj.feature_names = list(meta["feature_names"])
        obj.target_names = list(meta["target_names"])
        obj.feature_scaler = StandardScaler.from_dict(meta["scaler"]["features"])
        obj.target_scaler = StandardScaler.from_dict(meta["scaler"]["targets"])
        obj.metrics = {k: math.nan if v is None else float(v) for k, v in meta["metrics"].items()}
        obj._check_names()
        obj._resolve_anchors()
        obj.net = obj._build_net()
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
        # Directories saved before the online state was persisted: replay and monitor start
        # empty, the replay draws from the seed (what loading did before).
        if "online_state" in state:
            obj._load_online_state(state["online_state"], str(path))
        return obj

    def _online_state(self) -> dict[str, Any]:
        return {"replay": self.replay.state_dict(), "rng": rng_state(self._online_rng)}

    def _load_online_state(self, online: Any, where: str) -> None:
        if not isinstance(online, dict):
            raise DataError(f"{where}: online_state must be a mapping, got {type(online).__name__}")
        self.replay.load_state_dict(online.get("replay", {}), where)
        self._online_rng = restore_rng(online.get("rng", {}), f"{where}: online rng")


def finite_or_none(value: float) -> float | None:
    """A float for JSON, with NaN and infinities as ``null`` (strict JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None
