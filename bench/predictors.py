"""Predictor benchmark: fit time, online step time, batched inference, test error, coverage.

Run: ``.venv/bin/python bench/predictors.py [--bars 100000] [--threads 1]``.

Per model (OnlineLSTM, its GRU variant, GasPricePredictor, LiquidityPredictor) on a seeded toy
series with known structure (``predictors.toy_series``):

* fit time on 6,000 bars (early stopping on the last 20%);
* online update time per step: one ``update`` with the one sample that became known (the exact
  bar-by-bar protocol), and per bar when updates come in chunks of 32 (the provider default);
* batched inference throughput over ``--bars`` bars (``predict_block``, ``torch.no_grad``);
* walk-forward provider seconds over ``--bars`` bars, online (chunks of 32) and offline;
* test MSE against persistence (``y_t`` for ``y_{t+h}``) per output, and the share of test targets
  inside the 90% interval ``mean +- 1.645 std``;
* the online step's cost and quality, default (truncated BPTT over the last ``online_bptt`` bars)
  against full-window BPTT (``online_bptt=0``, the step before issue 6's speed-up but with the
  same flat optimiser): CPU ms per ``update`` of one sample, and a bar-by-bar walk-forward
  (``update_every=1``) over the first 1,500 test bars: MSE / persistence and 90% coverage of the
  predictions made while learning online;
* for the GRU, the same step through ``nn.GRU`` instead of ``predictors.gru``'s fused kernel.

Then the gas predictor per horizon on the EIP-1559 scenario generator (``envs.data.defi``):
model, a mean-reversion baseline and a linear model on the same features, each against
persistence (issue 6: is the base fee beyond the next block a martingale, or was the model weak?).

Then the env cost of the blocks: ``MarketTradingEnv`` reset time on the shipped BTC sample with
and without all four models' blocks (8+ columns each) in the observation, for the default Dict
observation and the flat one (medians over interleaved rounds).

Figures depend on the machine and its load (our CI box has 2 cores shared by several jobs): read
them as orders of magnitude, never assert them in tests. Goal (issue 6): online step < 2 ms on CPU;
blocks slow an env reset by < 10%. The goal line for the step is the median over interleaved
rounds (``--step-rounds``, see :func:`step_rounds`), the least load-sensitive figure here.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# Keep the project root importable and this folder out of the way (bench/envs.py would shadow the
# ``envs`` package when run as ``python bench/predictors.py``).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from predictors import (  # noqa: E402
    GasPricePredictor,
    LiquidityPredictor,
    OnlineGRU,
    OnlineLSTM,
    WalkForwardProvider,
    stack_blocks,
)
from predictors.base import Predictor  # noqa: E402
from predictors.toy_series import ar1, gas_like, pool_like  # noqa: E402

Z_90 = 1.6448536269514722
FIT_BARS = 6000
TEST_BARS = 4000
COMMON = {"window": 32, "hidden_size": 32, "max_epochs": 30, "patience": 4, "lr": 3e-3}
ONLINE_BARS = 1500
COMMON_BPTT = OnlineLSTM().config.online_bptt
RESET_ROUNDS = 41  # ~36 ms each for the six configurations: ~1.5 s in all
GAS_HORIZONS = (1, 2, 4, 8, 12, 24)

DataFn = Callable[[int], tuple[np.ndarray, np.ndarray, list[str]]]


def ar_data(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = ar1(n, phi=0.6, noise=0.5, seed=11)
    return np.stack([x, np.abs(x)], axis=1), x[:, None], ["x", "abs_x"]


def gas_data(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    fee, ts = gas_like(n, seed=1)
    s = GasPricePredictor().prepare(fee, ts)
    return s.features, s.targets, s.feature_names


def pool_data(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    s = LiquidityPredictor().prepare(*pool_like(n, seed=2))
    return s.features, s.targets, s.feature_names


MODELS: list[tuple[str, Callable[[], Predictor], DataFn]] = [
    ("OnlineLSTM", lambda: OnlineLSTM(horizons=(1,), **COMMON), ar_data),
    ("OnlineGRU", lambda: OnlineGRU(horizons=(1,), **COMMON), ar_data),
    ("GasPricePredictor", lambda: GasPricePredictor(horizons=(1, 12), **COMMON), gas_data),
    ("LiquidityPredictor", lambda: LiquidityPredictor(horizons=(1, 6), **COMMON), pool_data),
]


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """Median and mean wall seconds, and mean process CPU seconds, of ``repeat`` calls.

    On a shared machine the wall time includes waiting for a core; the process CPU time is
    closer to what the step costs on an idle one.
    """
    times = []
    cpu0 = time.process_time()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / repeat
    return float(np.median(times)), float(np.mean(times)), cpu


def error_table(
    model: Predictor, block: np.ndarray, targs: np.ndarray, rows: np.ndarray
) -> tuple[list[tuple[str, float]], list[float]]:
    """Per output: MSE / persistence MSE and 90% coverage of a ``predict_block`` result."""
    n_out, n_k = model.n_outputs, targs.shape[1]
    ratios, coverage = [], []
    for j, out_name in enumerate(model.output_names):
        h, k = model.config.horizons[j // n_k], j % n_k
        y = targs[rows + h, k]
        mse = np.mean((block[:, j] - y) ** 2)
        pers = np.mean((targs[rows, k] - y) ** 2)
        ratios.append((out_name, mse / pers))
        coverage.append(np.mean(np.abs(y - block[:, j]) <= Z_90 * block[:, n_out + j]))
    return ratios, coverage


def online_quality(
    model: Predictor, feats: np.ndarray, targs: np.ndarray, start: int, n_bars: int
) -> tuple[list[tuple[str, float]], float, float]:
    """Bar-by-bar walk-forward from ``start``: predict at ``t``, then learn the sample just known.

    Returns per-output MSE / persistence, mean 90% coverage and process CPU ms per bar (one
    single-row ``predict_block`` plus one ``update``).
    """
    lo, stop = start - (model.window - 1), start + n_bars
    provider = WalkForwardProvider(model, update_every=1)
    cpu0 = time.process_time()
    cols = provider.blocks(feats[lo:stop], targs[lo:stop])
    cpu_ms = 1e3 * (time.process_time() - cpu0) / n_bars
    names = provider.column_names()[:-1]
    block = np.stack([cols[c] for c in names], axis=1)[model.window - 1 :]
    ratios, coverage = error_table(model, block, targs, np.arange(start, stop))
    return ratios, float(np.mean(coverage)), cpu_ms


def step_cost(
    model: Predictor, feats: np.ndarray, targs: np.ndarray, fused: bool = True, **config
) -> tuple:
    """Median wall and mean CPU seconds of bar-by-bar ``update`` steps of a copy of ``model``.

    ``fused=False``: a GRU stack's step runs through ``nn.GRU`` instead of ``predictors.gru``'s
    kernel (``RecurrentGaussianNet.fused_online``), for comparison.
    """
    online = copy.deepcopy(model)
    online.config = dataclasses.replace(online.config, **config)
    online._online_opt = None
    if hasattr(online.net, "fused_online"):
        online.net.fused_online = fused
    s = np.arange(FIT_BARS, FIT_BARS + 400)
    it = iter([online.samples(feats, targs, s[i : i + 1]) for i in range(len(s))])
    for _ in range(20):  # warm-up (optimiser state, allocator)
        online.update(next(it))
    return timed(lambda: online.update(next(it)), 300)


def bench_model(name: str, make: Callable[[], Predictor], data: DataFn, bars: int) -> dict:
    feats, targs, names = data(FIT_BARS + TEST_BARS)
    model = make()
    t0 = time.perf_counter()
    metrics = model.fit((feats[:FIT_BARS], targs[:FIT_BARS]), feature_names=names)
    fit_s = time.perf_counter() - t0

    # Test error against persistence and 90% coverage, per output.
    rows = np.arange(FIT_BARS, len(feats) - model.target_delay)
    ratios, coverage = error_table(model, model.predict_block(feats, rows), targs, rows)

    # Online step: the bar-by-bar protocol learns one new sample per step.
    step_med, step_mean, step_cpu = step_cost(model, feats, targs)
    online = copy.deepcopy(model)
    chunk = online.samples(feats, targs, np.arange(FIT_BARS, FIT_BARS + 32))
    chunk_med, _, _ = timed(lambda: online.update(chunk), 50)
    # The same step training only the Gaussian head (online_scope="head"), and the step with
    # back-propagation through the whole window (online_bptt=0, the pre-truncation step).
    head_med, _, head_cpu = step_cost(model, feats, targs, online_scope="head")
    _, _, full_cpu = step_cost(model, feats, targs, online_bptt=0)
    # GRU: the same step through nn.GRU's per-step cell (before predictors.gru's kernel).
    is_gru = getattr(model.config, "cell", "") == "gru"
    nn_gru_cpu = step_cost(model, feats, targs, fused=False)[2] if is_gru else None
    walk = online_quality(model, feats, targs, FIT_BARS, ONLINE_BARS)
    full_model = copy.deepcopy(model)
    full_model.config = dataclasses.replace(full_model.config, online_bptt=0)
    walk_full = online_quality(full_model, feats, targs, FIT_BARS, ONLINE_BARS)

    # Batched inference and the provider over a long series.
    big_f, big_t, _ = data(bars)
    rows_big = np.arange(model.window - 1, bars)
    t0 = time.perf_counter()
    model.predict_block(big_f, rows_big)
    infer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    WalkForwardProvider(model, update_every=32).blocks(big_f, big_t)
    prov_online_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    WalkForwardProvider(model, online=False).blocks(big_f)
    prov_offline_s = time.perf_counter() - t0
    return {
        "name": name,
        "fit_s": fit_s,
        "epochs": int(metrics["epochs"]),
        "step_ms_median": 1e3 * step_med,
        "step_ms_mean": 1e3 * step_mean,
        "step_cpu_ms": 1e3 * step_cpu,
        "head_cpu_ms": 1e3 * head_cpu,
        "chunk32_ms_per_bar": 1e3 * chunk_med / 32,
        "head_step_ms_median": 1e3 * head_med,
        "full_cpu_ms": 1e3 * full_cpu,
        "nn_gru_cpu_ms": None if nn_gru_cpu is None else 1e3 * nn_gru_cpu,
        "walk": walk,
        "walk_full": walk_full,
        "infer_bars_per_s": len(rows_big) / infer_s,
        "provider_online_s": prov_online_s,
        "provider_offline_s": prov_offline_s,
        "ratios": ratios,
        "coverage": float(np.mean(coverage)),
        "model": model,
    }


def linear_forecast(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Least-squares fit with intercept on the training rows, applied to the test rows."""
    a = np.c_[np.ones(len(x_train)), x_train]
    coef, *_ = np.linalg.lstsq(a, y_train, rcond=None)
    return np.c_[np.ones(len(x_test)), x_test] @ coef


def bench_gas_horizons(n_train: int = 20_000, n_val: int = 4_000, n_test: int = 4_000) -> None:
    """Gas predictor per horizon on the EIP-1559 generator against persistence and baselines.

    Baselines, fitted on the training rows per horizon and output: *mean reversion* regresses the
    change ``y[t+h] - y[t]`` on the deviation ``y[t] - mean(y_train)`` (AR(1) towards the
    long-run level); *linear* regresses the change on all of the predictor's features at ``t``.
    Both forecast ``y[t] + fitted change``. Persistence is ``y[t]``.
    """
    from envs.data.defi import generate_scenario

    # The scenario the CLI uses (agents.predictor_blocks.arbitrage_scenario, seed 0).
    n = n_train + n_val + n_test
    scenario = generate_scenario(np.random.default_rng([0, 6]), n, 1)
    model = GasPricePredictor(
        window=32, horizons=GAS_HORIZONS, hidden_size=16, batch_size=256, max_epochs=12, patience=3
    )  # configs/predictor/gas.yaml, with more horizons
    series = model.prepare(scenario.base_fee)
    feats, targs = series.features, series.targets
    v0, t0, w = n_train, n_train + n_val, model.window
    tic = time.perf_counter()
    model.fit(
        (feats[:v0], targs[:v0]),
        (feats[v0 - (w - 1) : t0], targs[v0 - (w - 1) : t0]),
        feature_names=series.feature_names,
        target_names=series.target_names,
    )
    fit_s = time.perf_counter() - tic
    rows = np.arange(t0, n - max(GAS_HORIZONS))
    block = model.predict_block(feats, rows)
    log_fee = targs[:, 0]
    dlog = np.diff(log_fee[:t0])
    ac1 = float(np.corrcoef(dlog[1:], dlog[:-1])[0, 1])
    print(
        f"\nGas predictor per horizon, EIP-1559 generator (envs.data.defi, seed [0, 6]): fit on "
        f"{n_train} blocks ({fit_s:.0f} s), test on {len(rows)}. Log-fee changes: lag-1 "
        f"autocorrelation {ac1:+.3f}; persistence MSE / h (a random walk keeps it flat):"
    )
    pers_by_h = [np.mean((log_fee[rows + h] - log_fee[rows]) ** 2) / h for h in GAS_HORIZONS]
    print("  " + ", ".join(f"h{h} {v:.5f}" for h, v in zip(GAS_HORIZONS, pers_by_h, strict=True)))
    print(
        f"  {'output':<20}{'model/pers':>11}{'MR/pers':>9}{'linear/pers':>12}{'model/MR':>9}"
        f"{'model/lin':>10}{'cov90':>7}"
    )
    n_k, n_out = targs.shape[1], model.n_outputs
    train_rows = np.arange(w - 1, v0 - max(GAS_HORIZONS))
    for j, out_name in enumerate(model.output_names):
        h, k = GAS_HORIZONS[j // n_k], j % n_k
        y = targs[rows + h, k]
        now, now_train = targs[rows, k], targs[train_rows, k]
        change_train = targs[train_rows + h, k] - now_train
        mu = targs[:v0, k].mean()
        mr = now + linear_forecast((now_train - mu)[:, None], change_train, (now - mu)[:, None])
        lin = now + linear_forecast(feats[train_rows], change_train, feats[rows])
        pers = np.mean((now - y) ** 2)
        err = {
            name: np.mean((f - y) ** 2)
            for name, f in (("m", block[:, j]), ("mr", mr), ("lin", lin))
        }
        cov = np.mean(np.abs(y - block[:, j]) <= Z_90 * block[:, n_out + j])
        print(
            f"  {out_name:<20}{err['m'] / pers:>11.3f}{err['mr'] / pers:>9.3f}"
            f"{err['lin'] / pers:>12.3f}{err['m'] / err['mr']:>9.3f}{err['m'] / err['lin']:>10.3f}"
            f"{cov:>7.3f}",
            flush=True,
        )


def step_rounds(fitted: list[dict], rounds: int) -> None:
    """Print the online step's median over interleaved rounds, model after model, per round.

    The per-model rows above time each model once, minutes apart; on a shared (or virtualised)
    machine a burst of load during one of them moves its figure by 30% or more. Here every
    round times all models back to back (300 bar-by-bar ``update`` calls each, after 20 warm-up
    calls), so a burst hits one round of every model, and the median over rounds is the figure
    compared with issue 6's goal (< 2 ms per online step).
    """
    if rounds < 1:
        return
    data = {m[0]: m[2] for m in MODELS}
    inputs = [(r, *data[r["name"]](FIT_BARS + TEST_BARS)[:2]) for r in fitted]
    walls: dict[str, list[float]] = {r["name"]: [] for r in fitted}
    cpus: dict[str, list[float]] = {r["name"]: [] for r in fitted}
    for _ in range(rounds):
        for r, feats, targs in inputs:
            med, _, cpu = step_cost(r["model"], feats, targs)
            walls[r["name"]].append(1e3 * med)
            cpus[r["name"]].append(1e3 * cpu)
    print(f"\nOnline step (bptt {COMMON_BPTT}), {rounds} interleaved rounds of 300 updates each:")
    for name, values in walls.items():
        shown = " ".join(f"{v:.2f}" for v in values)
        print(
            f"  {name:<19}median wall ms per round {shown} | median {np.median(values):.2f} ms, "
            f"CPU {np.median(cpus[name]):.2f} ms -> goal < 2 ms "
            f"{'met' if np.median(values) < 2.0 else 'NOT met'}",
            flush=True,
        )


def bench_env_reset(
    fitted: list[dict], resets: int
) -> tuple[dict[bool, tuple[float, ...]], dict[bool, tuple[float, float]], int]:
    """Reset seconds of MarketTradingEnv (median over interleaved rounds of ``resets`` resets):
    no blocks, one block per model, one joint block; for the default Dict observation and for
    the flat one (``flatten=True``, rows added in issue 6's third session).

    Returns ``({flatten: (base, per_model, joint)}, {flatten: (per_model / base, joint /
    base)}, predictor columns)``; the ratios are medians of each round's paired ratio (the
    three configurations of a round run back to back, ~20 ms, so they meet the same machine
    speed; the ratio of the medians compares moments up to ~1.5 s apart).
    """
    from envs.data import load_sample
    from envs.market_env import MarketTradingEnv

    dataset = load_sample()
    n = len(dataset)
    blocks = {}
    for res in fitted:
        model: Predictor = res["model"]
        # Blocks aligned with the sample's bars; their meaning does not matter for the cost.
        data_fn = {m[0]: m[2] for m in MODELS}[res["name"]]
        f, _, _ = data_fn(n)
        cols = WalkForwardProvider(model, name=res["name"].lower(), online=False).blocks(f)
        blocks[f"pred_{res['name'].lower()}"] = stack_blocks(cols)[0]
    n_cols = sum(b.shape[1] for b in blocks.values())
    combined = {"pred": np.concatenate(list(blocks.values()), axis=1)}
    kwargs = {"dataset": dataset, "window": 32, "episode_length": 1024}
    envs = []
    for flatten in (False, True):
        for extra in ({}, {"predictor_blocks": blocks}, {"predictor_blocks": combined}):
            env = MarketTradingEnv(**kwargs, **extra, **({"flatten": True} if flatten else {}))
            env.reset(seed=0)
            envs.append(env)
    # A reset is ~20 us, so a load burst during one configuration's timing would decide the
    # comparison; the six are timed in alternation over RESET_ROUNDS rounds, medians kept.
    times: list[list[float]] = [[] for _ in envs]
    for _ in range(RESET_ROUNDS):
        for env, out in zip(envs, times, strict=True):
            t0 = time.perf_counter()
            for _ in range(resets):
                env.reset()
            out.append((time.perf_counter() - t0) / resets)
    medians = [float(np.median(t)) for t in times]
    arr = np.asarray(times)  # (6 configurations, rounds)
    paired = {
        flatten: (
            float(np.median(arr[k + 1] / arr[k])),
            float(np.median(arr[k + 2] / arr[k])),
        )
        for flatten, k in ((False, 0), (True, 3))
    }
    return {False: tuple(medians[:3]), True: tuple(medians[3:])}, paired, n_cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=100_000, help="bars for inference/provider")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--resets", type=int, default=300, help="env resets to time")
    parser.add_argument("--gas-only", action="store_true", help="only the gas horizon table")
    parser.add_argument(
        "--step-rounds",
        type=int,
        default=5,
        help="interleaved rounds of the online-step timing (load-robust goal line)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device cpu, {args.bars} bars; "
        f"window {COMMON['window']}, hidden {COMMON['hidden_size']}"
    )
    if args.gas_only:
        bench_gas_horizons()
        return
    header = (
        f"{'model':<19}{'fit s':>7}{'ep':>4}{'step ms':>9}{'(mean)':>8}{'cpu':>6}{'head ms':>8}"
        f"{'cpu':>6}"
        f"{'ms/bar@32':>10}"
        f"{'infer bars/s':>14}{'WF online s':>12}{'WF offl s':>10}{'cov90':>7}"
        "  test MSE / persistence"
    )
    print(header)
    results = []
    for name, make, data in MODELS:
        r = bench_model(name, make, data, args.bars)
        results.append(r)
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in r["ratios"])
        print(
            f"{name:<19}{r['fit_s']:>7.1f}{r['epochs']:>4}{r['step_ms_median']:>9.2f}"
            f"{r['step_ms_mean']:>8.2f}{r['step_cpu_ms']:>6.2f}{r['head_step_ms_median']:>8.2f}"
            f"{r['head_cpu_ms']:>6.2f}"
            f"{r['chunk32_ms_per_bar']:>10.3f}{r['infer_bars_per_s']:>14,.0f}"
            f"{r['provider_online_s']:>12.1f}{r['provider_offline_s']:>10.1f}{r['coverage']:>7.3f}"
            f"  {ratios}",
            flush=True,
        )
    print(
        f"\nOnline step, bar by bar: default (online_bptt={COMMON_BPTT}) vs full-window BPTT "
        f"(online_bptt=0); walk over the first {ONLINE_BARS} test bars, predicting while learning"
    )
    for r in results:
        for label, cpu, (w_ratios, w_cov, w_ms) in (
            (f"bptt {COMMON_BPTT}", r["step_cpu_ms"], r["walk"]),
            ("full bptt", r["full_cpu_ms"], r["walk_full"]),
        ):
            cells = ", ".join(f"{k} {v:.3f}" for k, v in w_ratios)
            print(
                f"  {r['name']:<19}{label:<10} step cpu {cpu:5.2f} ms | walk {w_ms:5.2f} ms/bar, "
                f"cov90 {w_cov:.3f}, MSE / persistence: {cells}",
                flush=True,
            )
    for r in results:
        if r["nn_gru_cpu_ms"] is not None:
            print(
                f"  {r['name']:<19}bptt {COMMON_BPTT}, step through nn.GRU instead of the fused "
                f"kernel (predictors.gru): step cpu {r['nn_gru_cpu_ms']:5.2f} ms "
                f"(fused: {r['step_cpu_ms']:5.2f} ms)",
                flush=True,
            )
    step_rounds(results, args.step_rounds)
    bench_gas_horizons()
    reset_s, paired, n_cols = bench_env_reset(results, args.resets)
    for flatten, (base, per_model, joint) in reset_s.items():
        layout = "flat observation" if flatten else "Dict observation"
        per_ratio, joint_ratio = paired[flatten]
        print(
            f"MarketTradingEnv reset (BTC sample, window 32, {n_cols} predictor columns, "
            f"{layout}): {1e6 * base:.1f} us without blocks; {1e6 * per_model:.1f} us "
            f"({100 * (per_model / base - 1):+.1f}%) with one block per model; "
            f"{1e6 * joint:.1f} us ({100 * (joint / base - 1):+.1f}%) with one joint block; "
            f"median per-round ratio {100 * (per_ratio - 1):+.1f}% per model, "
            f"{100 * (joint_ratio - 1):+.1f}% joint "
            f"-> goal < +10% {'met' if per_ratio < 1.1 else 'NOT met'} per model"
        )
    total = sum(r["provider_online_s"] for r in results)
    print(
        f"Walk-forward provider, all four models, {args.bars} bars, online: {total:.1f} s once per "
        "dataset (not per reset)"
    )


if __name__ == "__main__":
    main()
