"""Predictor blocks for training runs: fit on the training split, walk forward, save with the run.

Issue 6 ("Training and configs"): ``predictor=[gas,liquidity]`` adds predictor outputs to the
observation. This module turns the composed config's ``predictors`` mapping (one entry per selected
``configs/predictor/*.yaml``) and the task's data into aligned float32 arrays per split:

1. **Inputs** (``INPUTS``): each predictor config names what feeds it. ``market_features``:
   causal features of the market dataset (``envs.features.compute_features``) with the next-bar log
   return as target; ``market_regime``: ``predictors.regimes.regime_features`` of the close;
   ``defi_gas``: the arbitrage scenario's EIP-1559 base fee (``GasPricePredictor.prepare``);
   ``defi_liquidity``: reserves and volume of the pool along the scenario with nobody but the
   scenario's own traders and competitors acting (the *passive* pool path, see
   ``passive_pool_path``).
2. **Walk-forward** (``predictors.provider.WalkForwardProvider``): the predictor is fitted on the
   training rows only; training rows get out-of-sample predictions from refitted folds; validation
   and test rows continue walk-forward after the training data (predict at ``t``, then learn from
   ``y_t`` online when the provider is ``online``; never a refit on held-out rows). The env only
   indexes the arrays (DESIGN.md, data flow step 3).
3. **Saving**: ``PredictorBlocks.save(run_dir / "predictors")`` writes each fitted predictor in its
   own format (``<name>/metadata.json`` + weights) and ``manifest.json`` (kind, inputs, columns,
   the rows and timestamps it was fitted on, provider report), so a policy runner can reload them
   with ``load_run_predictors``.

The market env's blocks are rows of the split's dataset; the arbitrage env's blocks are rows of
the split's fixed scenario (``ArbitrageEnv(scenario=..., predictor_blocks=...)`` windows both at
the same random offset, so row ``t`` of an episode sees block row ``t``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from envs.data.dataset import MarketDataset
from envs.data.defi import DefiScenario
from envs.errors import ConfigError, DataError

# Input kind -> env kinds whose data can feed it.
INPUTS: dict[str, tuple[str, ...]] = {
    "market_features": ("market",),
    "market_regime": ("market",),
    "defi_gas": ("arbitrage",),
    "defi_liquidity": ("arbitrage",),
}
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


# --- config -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictorSpec:
    """One predictor config (``configs/predictor/<name>.yaml``), checked.

    Attributes:
        name: config name; the observation block is ``pred_<name>``.
        kind: registered predictor kind (``predictors.predictor_kinds()``).
        envs: env kinds (``market``, ``arbitrage``) it applies to.
        inputs: input builder (a key of ``INPUTS``).
        input_kwargs: options of the input builder (feature names, asset, pool ...).
        model: keyword arguments of ``build_predictor(kind, ...)``.
        provider: keyword arguments of ``WalkForwardProvider`` (refit_folds, online, update_every).
    """

    name: str
    kind: str
    envs: tuple[str, ...]
    inputs: str
    input_kwargs: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    provider: dict[str, Any] = field(default_factory=dict)

    @property
    def block(self) -> str:
        """Name of the observation block."""
        return f"pred_{self.name}"


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def parse_spec(name: str, node: Mapping[str, Any]) -> PredictorSpec:
    """Check one predictor config; ``ConfigError`` names the field of ``predictors.<name>``."""
    raw = dict(_plain(node) or {})
    where = f"predictors.{name} (configs/predictor/{name}.yaml)"
    allowed = {"kind", "envs", "inputs", "input_kwargs", "model", "provider", "description"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}; expected some of {sorted(allowed)}")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}.kind: expected a predictor kind, got {kind!r}")
    inputs = raw.get("inputs")
    if inputs not in INPUTS:
        raise ConfigError(f"{where}.inputs: expected one of {sorted(INPUTS)}, got {inputs!r}")
    envs_ = raw.get("envs") or list(INPUTS[inputs])
    if isinstance(envs_, str) or not all(e in ("market", "arbitrage") for e in envs_):
        raise ConfigError(f"{where}.envs: expected a list of 'market'/'arbitrage', got {envs_!r}")
    for key in ("input_kwargs", "model", "provider"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"{where}.{key}: expected a mapping, got {raw[key]!r}")
    provider = dict(raw.get("provider") or {})
    bad = sorted(set(provider) - {"refit_folds", "online", "update_every", "fill_value"})
    if bad:
        raise ConfigError(f"{where}.provider: unknown fields {bad}")
    return PredictorSpec(
        name=str(name),
        kind=kind,
        envs=tuple(str(e) for e in envs_),
        inputs=str(inputs),
        input_kwargs=dict(raw.get("input_kwargs") or {}),
        model=dict(raw.get("model") or {}),
        provider=provider,
    )


def predictor_specs(
    cfg: DictConfig | Mapping[str, Any], env_kind: str | None
) -> list[PredictorSpec]:
    """The predictor configs selected in ``cfg.predictors`` (empty when none), checked.

    Args:
        cfg: the composed root config (``predictors`` maps names to predictor configs).
        env_kind: the task's env kind; a predictor that does not apply to it is a ConfigError
            (None: skip that check, e.g. for ``train_predictor``).
    """
    node = cfg.get("predictors") if hasattr(cfg, "get") else None
    if not node:
        return []
    if not isinstance(_plain(node), dict):
        raise ConfigError(
            f"predictors: expected a mapping filled by `predictor=[name, ...]`, got {node!r}"
        )
    specs = [parse_spec(str(name), sub) for name, sub in _plain(node).items()]
    for spec in specs:
        if env_kind is not None and env_kind not in spec.envs:
            raise ConfigError(
                f"predictors.{spec.name}: applies to env kinds {list(spec.envs)}, not "
                f"{env_kind!r} (inputs {spec.inputs!r}); drop it from predictor=[...]"
            )
    return specs


def build_from_spec(spec: PredictorSpec) -> Any:
    """An unfitted predictor of ``spec.kind`` with ``spec.model`` as its config."""
    from predictors import build_predictor

    try:
        return build_predictor(spec.kind, **spec.model)
    except TypeError as exc:  # a config field the class does not take
        raise ConfigError(f"predictors.{spec.name}.model: {exc}") from exc


# --- inputs -----------------------------------------------------------------------------------
def next_bar_log_return(close: np.ndarray) -> np.ndarray:
    """``log(c_t / c_{t-1})`` per bar (0 at the first bar): known at bar ``t``."""
    c = np.asarray(close, dtype=np.float64)
    out = np.zeros_like(c)
    out[1:] = np.diff(np.log(c))
    return out


def market_series(spec: PredictorSpec, predictor: Any, dataset: MarketDataset) -> Any:
    """``PreparedSeries`` of a market-data predictor (``market_features`` / ``market_regime``)."""
    from envs.features import compute_features
    from predictors.base import PreparedSeries

    kw = dict(spec.input_kwargs)
    asset = int(kw.pop("asset", 0))
    if not 0 <= asset < dataset.n_assets:
        raise ConfigError(
            f"predictors.{spec.name}.input_kwargs.asset: {asset} outside the dataset's "
            f"{dataset.n_assets} assets ({dataset.symbols})"
        )
    close = dataset.close[:, asset]
    if spec.inputs == "market_regime":
        if not hasattr(predictor, "prepare"):
            raise ConfigError(f"predictors.{spec.name}: kind {spec.kind!r} has no prepare(close)")
        series = predictor.prepare(close, **kw)
        if series.targets.shape[1] == 0 and spec.kind == "regime_learned":
            if dataset.regimes is None:
                raise DataError(
                    f"predictors.{spec.name}: kind 'regime_learned' needs regime labels; "
                    f"{dataset.source} has none (use data=synthetic or kind regime_rules)"
                )
            series = PreparedSeries(
                series.features,
                dataset.regimes[:, None].astype(np.float64),
                series.feature_names,
                ["regime"],
            )
        return series
    names = kw.pop("features", None)
    target = kw.pop("target", "log_return")
    if kw:
        raise ConfigError(f"predictors.{spec.name}.input_kwargs: unknown fields {sorted(kw)}")
    fs = compute_features(dataset, None if names is None else list(names))
    feats = np.asarray(fs.values[:, asset, :], dtype=np.float64)
    if target == "log_return":
        targets = next_bar_log_return(close)[:, None]
    elif target == "none":
        targets = np.zeros((len(dataset), 0))
    else:
        raise ConfigError(
            f"predictors.{spec.name}.input_kwargs.target: expected 'log_return' or 'none', "
            f"got {target!r}"
        )
    target_names = ["log_return"] if targets.shape[1] else []
    return PreparedSeries(feats, targets, list(fs.names), target_names)


def passive_pool_path(
    scenario: DefiScenario, env_kwargs: Mapping[str, Any], pool: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reserves and volume of pool ``pool`` along ``scenario`` when our agent never trades.

    Runs ``Arbitrage-v0`` over the whole scenario with the no-op action, so reserves move only by
    the scenario's noise traders, LP events and competing arbitrageurs (the env's own dynamics,
    not a re-implementation). Blocks are computed before any episode runs, so they cannot depend
    on the agent's own trades; with the default 5M TVL pool the agent's trades move reserves far
    less than the flows, so the passive path is what a liquidity forecaster can know.

    Returns:
        ``reserve_x``, ``reserve_y`` (reserves at the start of each row) and ``volume`` (noise
        traders' traded value in quote during each row), each ``(T,)``.
    """
    from envs import arbitrage_core as core
    from envs.arbitrage_env import ArbitrageEnv

    keep = {k: v for k, v in env_kwargs.items() if k not in ("episode_length", "flatten")}
    keep["action_mode"] = "continuous"
    env = ArbitrageEnv(
        scenario=scenario, episode_length=len(scenario) - 1 - _gas_window(keep), **keep
    )
    if not 0 <= pool < env.cfg.n_pools:
        raise ConfigError(f"liquidity input: pool {pool} outside the {env.cfg.n_pools} pools")
    env.reset(seed=0)
    n = len(scenario)
    x = np.empty(n)
    y = np.empty(n)
    state, scen = env.state, env.scenario_batch
    row0 = int(state.row0[0])
    x[: row0 + 1] = state.x[0, pool]
    y[: row0 + 1] = state.y[0, pool]
    # The env's block transition without observations (about half of a step's cost): zero size
    # and tip are exactly what the no-op action decodes to.
    size = np.zeros((1, env.cfg.n_slots))
    tip = np.zeros(1)
    for r in range(row0 + 1, n):
        core.core_step(env.cfg, state, scen, size, tip, env.episode_length)
        x[r] = state.x[0, pool]
        y[r] = state.y[0, pool]
    volume = np.abs(scenario.noise_flow[:, pool]) * x * scenario.ref_price
    return x, y, volume


def _gas_window(env_kwargs: Mapping[str, Any]) -> int:
    from envs.arbitrage_core import ArbConfig

    return int(env_kwargs.get("gas_window") or ArbConfig.gas_window)


def defi_series(
    spec: PredictorSpec,
    predictor: Any,
    scenario: DefiScenario,
    env_kwargs: Mapping[str, Any],
    pool_path: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Any:
    """``PreparedSeries`` of an arbitrage predictor (``defi_gas`` / ``defi_liquidity``)."""
    kw = dict(spec.input_kwargs)
    if spec.inputs == "defi_gas":
        if kw:
            raise ConfigError(f"predictors.{spec.name}.input_kwargs: unknown fields {sorted(kw)}")
        # Scenario rows carry no wall-clock time (12 s blocks from an arbitrary origin), so no
        # time-of-day features.
        return predictor.prepare(scenario.base_fee)
    pool = int(kw.pop("pool", 0))
    if kw:
        raise ConfigError(f"predictors.{spec.name}.input_kwargs: unknown fields {sorted(kw)}")
    rx, ry, vol = (
        pool_path if pool_path is not None else passive_pool_path(scenario, env_kwargs, pool)
    )
    return predictor.prepare(rx, ry, vol)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (None: unchanged), then restore.

    The predictors are small recurrent nets whose batches gain little from intra-op threads; on a
    shared 2-core machine under load, a 2-epoch gas fit took 17.8 s with 2 threads and 1.9 s with
    one (measured here), because the threads wait on each other.
    """
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- walk-forward blocks ----------------------------------------------------------------------
@dataclass
class FittedPredictor:
    """A predictor fitted on the training rows and what its walk produced.

    Attributes:
        spec: its config.
        predictor: the predictor as fitted on ``fit_rows`` only (never updated on later rows).
        columns: names of the block's columns (``pred_<name>_...``, validity last).
        fit_rows: ``(start, stop)`` rows of the series the predictor was fitted on.
        report: the provider's report (first valid row, segments, online updates, seconds).
        feature_names: names of the input feature columns.
        target_names: names of the target columns.
    """

    spec: PredictorSpec
    predictor: Any
    columns: list[str]
    fit_rows: tuple[int, int]
    report: dict[str, Any]
    feature_names: list[str]
    target_names: list[str]


@dataclass
class PredictorBlocks:
    """Blocks per split and the fitted predictors of one training run.

    Attributes:
        splits: ``split -> {block name: (rows of the split, C) float32}``.
        fitted: ``name -> FittedPredictor``.
        split_rows: ``split -> (start, stop)`` rows of the full series.
        fit_range_time: first and last timestamp (ISO-8601 UTC) of the fit rows, when known.
        source: what the series is (dataset source, or the scenario's seed and size).
    """

    splits: dict[str, dict[str, np.ndarray]]
    fitted: dict[str, FittedPredictor]
    split_rows: dict[str, tuple[int, int]]
    fit_range_time: tuple[str, str] | None = None
    source: str = ""

    def block_columns(self) -> dict[str, list[str]]:
        """``block name -> column names``."""
        return {f.spec.block: list(f.columns) for f in self.fitted.values()}

    def manifest(self) -> dict[str, Any]:
        """JSON-ready description of every predictor (what a policy runner needs to rebuild)."""
        out: dict[str, Any] = {
            "source": self.source,
            "split_rows": {k: list(v) for k, v in self.split_rows.items()},
            "predictors": {},
        }
        for name, f in self.fitted.items():
            out["predictors"][name] = {
                "kind": f.spec.kind,
                "block": f.spec.block,
                "columns": list(f.columns),
                "inputs": f.spec.inputs,
                "input_kwargs": f.spec.input_kwargs,
                "model": f.spec.model,
                "provider": f.spec.provider,
                "envs": list(f.spec.envs),
                "feature_names": list(f.feature_names),
                "target_names": list(f.target_names),
                "fit_rows": list(f.fit_rows),
                "fit_range_time": None
                if self.fit_range_time is None
                else list(self.fit_range_time),
                "first_valid_row": f.report.get("first_valid_row"),
                "valid_rows": f.report.get("valid_rows"),
                "online_updates": f.report.get("online_updates"),
                "walk_seconds": f.report.get("seconds"),
                "fit_metrics": _json_metrics(getattr(f.predictor, "metrics", {}) or {}),
                "directory": name,
            }
        return out

    def save(self, directory: str | Path) -> Path:
        """Save each fitted predictor in ``directory/<name>/`` and ``directory/manifest.json``."""
        from predictors.metadata import atomic_write_bytes

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, f in self.fitted.items():
            f.predictor.save(directory / name)
        text = json.dumps(self.manifest(), indent=2, sort_keys=True, allow_nan=False)
        atomic_write_bytes(directory / MANIFEST, (text + "\n").encode("utf-8"))
        return directory


def _json_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = f if math.isfinite(f) else None
    return out


def utc_iso(ns: int) -> str:
    """ISO-8601 UTC string of a nanosecond epoch timestamp."""
    import datetime as dt

    return dt.datetime.fromtimestamp(int(ns) / 1e9, tz=dt.timezone.utc).isoformat()


def split_row_ranges(n: int, train: float, val: float) -> dict[str, tuple[int, int]]:
    """Chronological ``(start, stop)`` rows of train/val/test (``envs.data.splits`` rule)."""
    from envs.data.splits import split_indices

    parts = split_indices(n, train, val, 0, 1)
    return {name: (int(p.start), int(p.stop)) for name, p in zip(SPLITS, parts, strict=True)}


def walk_forward_blocks(
    specs: Sequence[PredictorSpec],
    series_for: Any,
    split_rows: Mapping[str, tuple[int, int]],
    threads: int | None = 1,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, FittedPredictor]]:
    """Fit each predictor on the training rows and compute its blocks over the whole series.

    Args:
        specs: the predictor configs.
        series_for: ``(spec, predictor) -> PreparedSeries`` over the whole series (all splits).
        split_rows: ``split -> (start, stop)``; ``train`` is the fit range.
        threads: torch intra-op threads while fitting (see ``torch_threads``).

    Returns:
        ``split -> {block: (rows, C) float32}`` and ``name -> FittedPredictor``.
    """
    from predictors.provider import WalkForwardProvider, stack_blocks

    splits: dict[str, dict[str, np.ndarray]] = {s: {} for s in split_rows}
    fitted: dict[str, FittedPredictor] = {}
    a, b = split_rows["train"]
    for spec in specs:
        predictor = build_from_spec(spec)
        series = series_for(spec, predictor)
        provider = WalkForwardProvider(predictor, name=spec.name, **spec.provider)
        targets = series.targets
        try:
            with torch_threads(threads):
                cols = provider.blocks(
                    series.features,
                    targets,
                    fit_range=(a, b),
                    feature_names=series.feature_names,
                    target_names=series.target_names or None,
                )
        except DataError as exc:
            raise DataError(f"predictors.{spec.name}: {exc}") from exc
        matrix, names = stack_blocks(cols, provider.column_names())
        for split, (lo, hi) in split_rows.items():
            splits[split][spec.block] = np.ascontiguousarray(matrix[lo:hi])
        fitted[spec.name] = FittedPredictor(
            spec=spec,
            predictor=predictor,
            columns=list(names),
            fit_rows=(a, b),
            report=dict(provider.report),
            feature_names=list(series.feature_names),
            target_names=list(series.target_names),
        )
    return splits, fitted


def market_predictor_blocks(
    specs: Sequence[PredictorSpec], dataset: MarketDataset, train: float, val: float
) -> PredictorBlocks:
    """Blocks for the market task: the whole dataset walked once, sliced per split.

    Args:
        specs: predictor configs that apply to the market env.
        dataset: the full dataset (before the chronological split).
        train: training share; val: validation share (same as the task's split).
    """
    rows = split_row_ranges(len(dataset), train, val)
    splits, fitted = walk_forward_blocks(
        specs, lambda spec, p: market_series(spec, p, dataset), rows
    )
    a, b = rows["train"]
    ts = dataset.timestamps
    return PredictorBlocks(
        splits,
        fitted,
        rows,
        fit_range_time=(utc_iso(ts[a]), utc_iso(ts[b - 1])),
        source=str(dataset.source),
    )


def arbitrage_scenario(
    n_pools: int, sizes: Mapping[str, int], seed: int
) -> tuple[DefiScenario, dict[str, tuple[int, int]]]:
    """One long seeded scenario cut chronologically into train/val/test rows.

    Args:
        n_pools: pools of the env's config.
        sizes: ``train_blocks``, ``val_blocks``, ``test_blocks``.
        seed: the run's seed (the scenario stream is derived from it).
    """
    from envs.data.defi import generate_scenario

    counts = []
    for split in SPLITS:
        key = f"{split}_blocks"
        value = sizes.get(key)
        if not isinstance(value, int) or value < 2:
            raise ConfigError(f"arbitrage_scenario.{key}: expected an integer >= 2, got {value!r}")
        counts.append(value)
    edges = np.cumsum([0, *counts])
    # A stream of its own ([seed, 6]) so the scenario does not shift when other seeded draws change.
    rng = np.random.default_rng([int(seed), 6])
    scenario = generate_scenario(rng, int(edges[-1]), n_pools)
    rows = {s: (int(edges[i]), int(edges[i + 1])) for i, s in enumerate(SPLITS)}
    return scenario, rows


def arbitrage_predictor_blocks(
    specs: Sequence[PredictorSpec],
    scenario: DefiScenario,
    rows: Mapping[str, tuple[int, int]],
    env_kwargs: Mapping[str, Any],
    source: str = "",
) -> PredictorBlocks:
    """Blocks for the arbitrage task over one long scenario, sliced per split."""
    paths: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def series_for(spec: PredictorSpec, predictor: Any) -> Any:
        path = None
        if spec.inputs == "defi_liquidity":
            pool = int(spec.input_kwargs.get("pool", 0))
            if pool not in paths:
                paths[pool] = passive_pool_path(scenario, env_kwargs, pool)
            path = paths[pool]
        return defi_series(spec, predictor, scenario, env_kwargs, path)

    splits, fitted = walk_forward_blocks(specs, series_for, rows)
    return PredictorBlocks(splits, fitted, dict(rows), None, source)


def load_run_predictors(directory: str | Path, device: str = "auto") -> dict[str, Any]:
    """Reload the predictors saved by ``PredictorBlocks.save`` (``run_dir / "predictors"``).

    Returns:
        ``name -> Predictor`` in manifest order.

    Raises:
        DataError: no manifest, or a predictor directory is missing.
    """
    from predictors import load_predictor

    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: predictor manifest not found")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return {
        name: load_predictor(directory / entry["directory"], device=device)
        for name, entry in manifest["predictors"].items()
    }


# --- evaluation (scripts/train_predictor.py) --------------------------------------------------
Z_90 = 1.6448536269514722


def forecast_errors(mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Gaussian NLL and share inside ``mean +- 1.645 std`` (DOMAIN.md: Predictors)."""
    err = target - mean
    var = np.maximum(std, 1e-12) ** 2
    nll = 0.5 * (np.log(2 * np.pi * var) + err**2 / var)
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "nll": float(np.mean(nll)),
        "coverage_90": float(np.mean(np.abs(err) <= Z_90 * std)),
    }


def evaluate_forecaster(
    predictor: Any,
    series: Any,
    split_rows: Mapping[str, tuple[int, int]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Test-split errors of a Gaussian forecaster next to persistence and mean baselines.

    Samples are the test rows whose targets lie inside the test split. Per output
    (``{target}_h{h}``): the model as fitted (no online updates), the persistence forecast
    ``y[t]`` with the training std of ``h``-bar changes, and the training mean with the training
    std. Baseline statistics come from the training rows only.

    Returns:
        ``output -> {"model" | "persistence" | "mean": {mae, rmse, nll, coverage_90}}``.
    """
    feats, targs = series.features, series.targets
    a, b = split_rows["train"]
    lo, hi = split_rows["test"]
    horizons = list(predictor.config.horizons)
    delay = predictor.target_delay
    rows = np.arange(max(lo, predictor.window - 1), hi - delay)
    if len(rows) < 2:
        raise DataError(f"test split: {len(rows)} samples for window/horizons; give more rows")
    batch = predictor.samples(feats, targs, rows)
    pred = predictor.predict(batch.windows)
    mean, std = np.asarray(pred.mean), np.asarray(pred.std)
    y = np.asarray(batch.targets)
    names = predictor.output_names
    train_targets = targs[a:b]
    out: dict[str, dict[str, dict[str, float]]] = {}
    k_count = targs.shape[1]
    for j, name in enumerate(names):
        h = horizons[j // k_count]
        k = j % k_count
        tr = train_targets[:, k]
        changes = tr[h:] - tr[:-h] if len(tr) > h else np.zeros(1)
        persist_std = np.full(len(rows), max(float(np.std(changes)), 1e-12))
        mean_std = np.full(len(rows), max(float(np.std(tr)), 1e-12))
        out[name] = {
            "model": forecast_errors(mean[:, j], std[:, j], y[:, j]),
            "persistence": forecast_errors(targs[rows, k], persist_std, y[:, j]),
            "mean": forecast_errors(np.full(len(rows), float(np.mean(tr))), mean_std, y[:, j]),
        }
    return out


def online_walk(
    predictor: Any,
    series: Any,
    start: int,
    stop: int,
    update_every: int = 32,
    on_update: Any = None,
) -> dict[str, float]:
    """Walk a copy of ``predictor`` over rows ``[start, stop)``: predict a chunk, then learn.

    The protocol of ``WalkForwardProvider`` (predict with the model as of the chunk's first bar,
    then one ``update`` with the samples whose targets arrived), but keeping the model so its
    online monitor (``stats()``, each sample scored before it is learnt from) can be read.

    Args:
        on_update: called with ``(row, loss, stats)`` after every update (for TensorBoard).

    Returns:
        The copy's final ``stats()`` as floats (``online_loss_mean``, ``online_mse_mean``,
        ``online_coverage_90``, ``online_updates``, ``online_samples``) and ``walk_seconds``.
    """
    t0 = time.perf_counter()
    model = copy.deepcopy(predictor)
    feats, targs = series.features, series.targets
    delay = model.target_delay
    t = max(start, model.window - 1)
    while t < stop:
        end = min(t + update_every, stop)
        model.predict_block(feats, np.arange(t, end))
        lo_s = max(t - delay, model.window - 1, start)
        hi_s = end - delay
        if hi_s > lo_s:
            loss = model.update(model.samples(feats, targs, np.arange(lo_s, hi_s)))
            if on_update is not None:
                on_update(end, float(loss), model.stats())
        t = end
    s = model.stats()
    return {
        "online_loss_mean": float(s.loss_mean),
        "online_mse_mean": float(s.mse_mean),
        "online_coverage_90": float(s.coverage_90),
        "online_updates": float(s.updates),
        "online_samples": float(s.samples_seen),
        "walk_seconds": time.perf_counter() - t0,
    }
