"""Benchmark of the issue-6 part-2 predictors: fit time, online step, inference, test quality.

Prints one row per model: fit seconds, online ``update`` milliseconds per step (16 new samples
plus replay), batched inference throughput (bars/s over 20k bars), and the test figure against
its baseline (MSE vs persistence and 90% coverage for forecasters; accuracy vs majority for
classifiers and regime detectors; reconstruction MSE vs the training mean for VAEs).

Run: ``.venv/bin/python bench/predictors_advanced.py`` (CPU, one thread; figures under whatever
load the machine has).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

# Keep the project root importable and this folder out of the way (bench/envs.py would shadow
# the envs package when the script is run as ``python bench/predictors_advanced.py``).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from envs.data import regime_switching  # noqa: E402
from predictors import (  # noqa: E402
    AttentionForecaster,
    ConditionalMarketVAE,
    DirectionClassifier,
    HierarchicalMarketVAE,
    LearnedRegimeDetector,
    MarketVAE,
    RuleRegimeDetector,
    TransformerForecaster,
)
from predictors.regimes import (  # noqa: E402
    dataset_regime_series,
    regime_accuracy,
    to_generator_labels,
    valid_rows,
)

Z_90 = 1.6448536269514722
N, SPLIT = 24_000, 4_000


def ar1(n: int, phi: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, e = np.zeros(n), rng.normal(0.0, noise, n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def timed_fit(model, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    model.fit(*args, **kwargs)
    return time.perf_counter() - t0


def update_ms(model, feats, targs, start: int, steps: int = 50) -> float:
    if not hasattr(model, "samples") or model.target_delay < 0:
        return float("nan")
    t0 = time.perf_counter()
    for i in range(steps):
        rows = np.arange(start + 16 * i, start + 16 * (i + 1))
        model.update(model.samples(feats, targs, rows))
    return 1000 * (time.perf_counter() - t0) / steps


def throughput(model, feats, start: int) -> tuple[float, np.ndarray]:
    rows = np.arange(start, min(start + 20_000, len(feats) - 1))
    t0 = time.perf_counter()
    block = model.predict_block(feats, rows)
    return len(rows) / (time.perf_counter() - t0), block


def main() -> None:
    torch.set_num_threads(1)
    rows_out = []
    x = ar1(N, 0.6, 0.5, seed=11)
    f = x[:, None]
    for name, model in [
        (
            "transformer",
            TransformerForecaster(
                window=16, hidden_size=16, n_heads=2, max_epochs=12, lr=1e-2, patience=3
            ),
        ),
        (
            "attention/decay",
            AttentionForecaster(
                window=16, hidden_size=16, extractor="decay", max_epochs=12, lr=1e-2, patience=3
            ),
        ),
        (
            "attention/multiscale",
            AttentionForecaster(
                window=16,
                hidden_size=16,
                extractor="multiscale",
                scales=(1, 4, 8),
                max_epochs=12,
                lr=1e-2,
                patience=3,
            ),
        ),
        (
            "attention/hierarchical",
            AttentionForecaster(
                window=16,
                hidden_size=16,
                extractor="hierarchical",
                chunk=4,
                max_epochs=12,
                lr=1e-2,
                patience=3,
            ),
        ),
    ]:
        fit_s = timed_fit(model, (f[:SPLIT], f[:SPLIT]))
        bps, block = throughput(model, f, SPLIT)
        y = x[SPLIT + 1 : SPLIT + 1 + len(block)]
        mse = np.mean((block[:, 0] - y) ** 2)
        pers = np.mean((x[SPLIT : SPLIT + len(block)] - y) ** 2)
        cov = np.mean(np.abs(y - block[:, 0]) <= Z_90 * block[:, 1])
        ms = update_ms(model, f, f, SPLIT)
        rows_out.append(
            (
                name,
                fit_s,
                ms,
                bps,
                f"mse {mse:.4f} vs persistence {pers:.4f} (noise floor 0.25)",
                f"{cov:.3f}",
            )
        )

    r = 0.01 * ar1(N, 0.5, 1.0, seed=3)
    lp = np.cumsum(r)[:, None]
    clf = DirectionClassifier(window=16, hidden_size=16, max_epochs=10, lr=1e-2, patience=3)
    fit_s = timed_fit(clf, (r[:SPLIT, None], lp[:SPLIT]))
    bps, block = throughput(clf, r[:, None], SPLIT)
    rows = np.arange(SPLIT, SPLIT + len(block) - 1)
    lab = clf.labels(lp, rows)
    acc = np.mean(block[:-1, :3].argmax(1) == lab)
    maj = np.bincount(lab).max() / len(lab)
    pers = np.mean(clf.labels(lp, rows - 1) == lab)
    rows_out.append(
        (
            "direction (BiLSTM-att)",
            fit_s,
            update_ms(clf, r[:, None], lp, SPLIT),
            bps,
            f"acc {acc:.3f} vs majority {maj:.3f}, last-label {pers:.3f}",
            "-",
        )
    )

    # VAEs on two-regime AR returns (as in tests/test_predictors_vae.py).
    rng = np.random.default_rng(0)
    labels = np.zeros(N, dtype=np.int64)
    t, k = 0, 0
    while t < N:
        length = int(rng.integers(200, 400))
        labels[t : t + length], k, t = k, 1 - k, t + length
    params = {0: (0.5, 0.5, 0.6), 1: (-0.5, 2.0, -0.3)}
    ret = np.zeros(N)
    for t in range(1, N):
        mu, sd, phi = params[labels[t]]
        ret[t] = mu + phi * (ret[t - 1] - mu) + sd * np.sqrt(1 - phi**2) * rng.normal()
    fv = ret[:, None]
    vfast = {"window": 16, "max_epochs": 25, "lr": 1e-2, "batch_size": 256, "patience": 5}
    train_split = 7000
    for name, model, targets in [
        ("vae", MarketVAE(latent_dim=4, **vfast), None),
        (
            "cvae",
            ConditionalMarketVAE(latent_dim=8, regime_names=("calm", "wild"), **vfast),
            labels[:, None].astype(float),
        ),
        ("hvae", HierarchicalMarketVAE(latent_dim=4, **vfast), None),
    ]:
        fit_s = timed_fit(
            model, (fv[:train_split], None if targets is None else targets[:train_split])
        )
        bps, block = throughput(model, fv, train_split)
        win = np.lib.stride_tricks.sliding_window_view(ret[train_split:], 16)[:, :, None]
        mse = np.mean((model.reconstruct(win) - win) ** 2)
        base = np.mean((win - ret[:train_split].mean()) ** 2)
        ms = update_ms(model, fv, targets, train_split)
        extra = ""
        if name == "cvae":
            rows = np.arange(train_split + 15, train_split + 15 + len(block))
            rows = rows[rows < N]
            extra = f"; regime acc {np.mean(block[: len(rows), -2:].argmax(1) == labels[rows]):.3f}"
        rows_out.append(
            (name, fit_s, ms, bps, f"recon mse {mse:.3f} vs mean {base:.3f}{extra}", "-")
        )

    ds = regime_switching(N, seed=3)
    s = dataset_regime_series(ds)
    vr = valid_rows(N, 96)
    te = vr[vr >= 12_000]
    rules = RuleRegimeDetector()
    fit_s = timed_fit(rules, (s.features[:12_000], None), feature_names=s.feature_names)
    t0 = time.perf_counter()
    b = rules.predict_block(s.features, te)
    bps = len(te) / (time.perf_counter() - t0)
    sc = regime_accuracy(
        to_generator_labels(b[:, :5].argmax(1), b[:, 5], ds.regime_names), ds.regimes[te]
    )
    rows_out.append(
        (
            "regime rules",
            fit_s,
            float("nan"),
            bps,
            f"acc {sc['accuracy']:.3f} vs majority {sc['majority']:.3f}",
            "-",
        )
    )
    learned = LearnedRegimeDetector(class_names=ds.regime_names, max_epochs=15, lr=3e-3)
    fit_s = timed_fit(
        learned,
        (s.features[:12_000], s.targets[:12_000]),
        feature_names=s.feature_names,
        target_names=s.target_names,
    )
    t0 = time.perf_counter()
    b = learned.predict_block(s.features, te)
    bps = len(te) / (time.perf_counter() - t0)
    sc = regime_accuracy(b[:, :4].argmax(1), ds.regimes[te])
    ms = update_ms(learned, s.features, s.targets, 12_000)
    rows_out.append(
        (
            "regime learned (MLP)",
            fit_s,
            ms,
            bps,
            f"acc {sc['accuracy']:.3f} vs majority {sc['majority']:.3f}",
            "-",
        )
    )

    print(
        f"{'model':24s} {'fit s':>7s} {'update ms':>10s} {'bars/s':>10s}  cov90  test vs baseline"
    )
    for name, fit_s, ms, bps, quality, cov in rows_out:
        print(f"{name:24s} {fit_s:7.2f} {ms:10.2f} {bps:10.0f}  {cov:>5s}  {quality}")


if __name__ == "__main__":
    main()
