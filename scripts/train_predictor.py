"""Train one predictor: ``python scripts/train_predictor.py predictor=gas`` (lstm, vae, regime ...).

Fits the predictor on the training split with early stopping on the validation split, evaluates
it on the test split (against persistence and training-mean baselines for forecasters: MAE, RMSE,
Gaussian NLL, 90% coverage; plus an online walk-forward over the test rows, each sample scored
before it is learnt from), writes TensorBoard scalars into ``tb/`` of the run directory and
saves into it (``runs/predictors/<name>/<timestamp>/``): the predictor itself (``metadata.json``
+ weights, loadable with ``predictors.load_predictor(run_dir)``) and ``metrics.json``.

TensorBoard: per-epoch training curves ``epoch/train_loss``, ``epoch/val_loss`` (and
``epoch/val_coverage_90`` for Gaussian forecasters), one point per epoch at step = epoch; the
final ``fit/*`` and ``test/*`` figures at step 0; ``online/*`` along the test walk by row.

Data: market-data predictors (inputs ``market_*``) read the ``data`` group's dataset, split
chronologically by ``data.train`` / ``data.val``; gas and liquidity read one seeded DeFi scenario
(``scenario.*_blocks`` rows, ``envs/data/defi.py``). The predictor's fit never sees validation
targets except for early stopping, and never sees test rows.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.predictor_blocks import (
    arbitrage_scenario,
    build_from_spec,
    defi_series,
    evaluate_forecaster,
    market_series,
    online_walk,
    predictor_specs,
    split_row_ranges,
    torch_threads,
    utc_iso,
)
from envs.errors import ConfigError, DataError


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (recursively)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def train_predictor(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Fit, evaluate and save the one predictor selected in ``cfg.predictors``.

    Args:
        cfg: the composed ``configs/train_predictor.yaml``.
        run_dir: output directory (Hydra's run directory).

    Returns:
        The metrics written to ``metrics.json``.
    """
    from torch.utils.tensorboard import SummaryWriter

    from agents.tasks import load_data
    from envs.arbitrage_env import build_config
    from predictors.base import SeriesData
    from predictors.forecaster import GaussianForecaster as Forecaster

    specs = predictor_specs(cfg, None)
    if len(specs) != 1:
        raise ConfigError(
            f"predictor: train_predictor trains exactly one predictor, got {len(specs)} "
            f"({[s.name for s in specs]}); use predictor=<name>"
        )
    spec = specs[0]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    predictor = build_from_spec(spec)
    timestamps = None
    if spec.inputs.startswith("market"):
        data_cfg = dict(OmegaConf.to_container(cfg.data, resolve=True))  # type: ignore[arg-type]
        dataset = load_data(data_cfg, seed)
        rows = split_row_ranges(
            len(dataset), float(data_cfg.get("train", 0.7)), float(data_cfg.get("val", 0.15))
        )
        series = market_series(spec, predictor, dataset)
        timestamps = dataset.timestamps
        source = str(dataset.source)
    else:
        scen_cfg = dict(OmegaConf.to_container(cfg.scenario, resolve=True))  # type: ignore[arg-type]
        env_kwargs = dict(scen_cfg.pop("env_kwargs", None) or {})
        n_pools = build_config(**env_kwargs).n_pools
        scenario, rows = arbitrage_scenario(n_pools, scen_cfg, seed)
        series = defi_series(spec, predictor, scenario, env_kwargs)
        source = f"generate_scenario(seed=[{seed}, 6], rows={len(scenario)})"

    (a, b), (va, vb), (ta, tb) = rows["train"], rows["val"], rows["test"]
    feats, targs = series.features, series.targets
    names = {"feature_names": series.feature_names, "target_names": series.target_names or None}
    # Validation windows may read the last training bars (features only: every validation
    # target lies in the validation split), so no validation sample is lost to the window.
    v0 = max(a, va - (predictor.window - 1))
    writer = SummaryWriter(log_dir=str(run_dir / "tb"))
    with torch_threads(cfg.get("threads", 1)):
        fit_metrics = predictor.fit(
            SeriesData(feats[a:b], targs[a:b]), SeriesData(feats[v0:vb], targs[v0:vb]), **names
        )
        for key, value in fit_metrics.items():
            if math.isfinite(float(value)):
                writer.add_scalar(f"fit/{key}", float(value), 0)
        # Training curves: one point per epoch (train/val loss, val 90% coverage for Gaussian
        # forecasters), logged after the fit from the predictor's history.
        history = [dict(h) for h in getattr(predictor, "history", [])]
        for entry in history:
            for key, value in entry.items():
                if key != "epoch" and math.isfinite(float(value)):
                    writer.add_scalar(f"epoch/{key}", float(value), int(entry["epoch"]))

        metrics: dict[str, Any] = {
            "name": spec.name,
            "kind": spec.kind,
            "inputs": spec.inputs,
            "source": source,
            "split_rows": {k: list(v) for k, v in rows.items()},
            "fit_rows": [a, b],
            "fit": fit_metrics,
            "fit_history": history,
            "feature_names": list(series.feature_names),
            "target_names": list(series.target_names),
            "columns": list(predictor.block_columns()),
        }
        if timestamps is not None:
            metrics["fit_range_time"] = [utc_iso(timestamps[a]), utc_iso(timestamps[b - 1])]
            metrics["test_range_time"] = [utc_iso(timestamps[ta]), utc_iso(timestamps[tb - 1])]

        if isinstance(predictor, Forecaster):
            table = evaluate_forecaster(predictor, series, rows)
            metrics["test"] = table
            for output, by_model in table.items():
                for model_name, errs in by_model.items():
                    for key, value in errs.items():
                        writer.add_scalar(f"test/{output}/{model_name}/{key}", value, 0)

        # Block columns over the test rows (regime shares, latent and anomaly levels ...).
        test_rows = np.arange(max(ta, predictor.window - 1), tb)
        block = predictor.predict_block(feats, test_rows)
        metrics["test_block_means"] = {
            c: float(v) for c, v in zip(predictor.block_columns(), block.mean(axis=0), strict=True)
        }

        def log_update(row: int, loss: float, stats: Any) -> None:
            writer.add_scalar("online/step_loss", loss, row)
            if math.isfinite(stats.loss_mean):
                writer.add_scalar("online/loss_mean", stats.loss_mean, row)
            if math.isfinite(stats.coverage_90):
                writer.add_scalar("online/coverage_90", stats.coverage_90, row)

        # Online walk-forward over the test rows, continuing from the fitted model (a copy: the
        # saved predictor stays as fitted on the training split).
        metrics["test_online"] = online_walk(
            predictor, series, ta, tb, int(cfg.update_every), log_update
        )
    for key, value in metrics["test_online"].items():
        if math.isfinite(value):
            writer.add_scalar(f"test_online/{key}", value, 0)
    writer.close()

    predictor.save(run_dir)
    text = json.dumps(_finite(metrics), indent=2, sort_keys=True, allow_nan=False)
    (run_dir / "metrics.json").write_text(text + "\n", encoding="utf-8")
    return metrics


def _summary(metrics: dict[str, Any]) -> str:
    lines = [f"{metrics['name']} ({metrics['kind']}) on {metrics['source']}"]
    fit = metrics["fit"]
    lines.append("fit: " + ", ".join(f"{k}={v:.4g}" for k, v in fit.items()))
    for output, by_model in metrics.get("test", {}).items():
        cells = ", ".join(
            f"{m}: mae={e['mae']:.4g} cov90={e['coverage_90']:.2f}" for m, e in by_model.items()
        )
        lines.append(f"test {output}: {cells}")
    online = metrics["test_online"]
    lines.append(
        f"online walk over test: loss_mean={online['online_loss_mean']:.4g} "
        f"coverage_90={online['online_coverage_90']:.3g} updates={online['online_updates']:.0f}"
    )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_predictor")
def main(cfg: DictConfig) -> None:
    """Compose the config, train, evaluate and save the predictor."""
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = train_predictor(cfg, run_dir)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(_summary(metrics))
    print(f"saved to {run_dir}")


if __name__ == "__main__":
    main()
