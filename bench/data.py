"""Benchmark of the data layer: load a 1M-bar OHLCV file (CSV and Parquet), compute features.

Writes a ``--bars`` x 5-column (plus timestamp) file to a temporary directory, then prints wall
time of each stage (best of ``--repeat`` runs), the peak of Python-tracked allocations during the
stage (``tracemalloc``, NumPy buffers included; measured in a separate run because tracing slows
allocation), the peak RSS growth of a fresh process loading each file (pandas' C parser and Arrow
buffers are invisible to tracemalloc) and this process's peak RSS (``resource.getrusage``).

Usage: ``.venv/bin/python bench/data.py [--bars 1000000] [--repeat 3]``
Timings depend on the machine and on other load: quote them with that context.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the imports below must come after this line.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.data import gbm, load_file
from envs.data.synthetic import jump_diffusion, ornstein_uhlenbeck, regime_switching


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def traced_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak traced allocation (MB) while running ``fn`` once."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def maxrss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        return None
    return None


def load_peak_rss_mb(path: Path) -> float:
    """Peak RSS growth (MB) while a fresh interpreter loads ``path``, over its RSS just before.

    tracemalloc does not see pandas' C parser or Arrow buffers, so this whole-process figure is
    the honest one. It runs in a child because the RSS high-water mark of this (already large)
    process cannot go down; the child resets its own mark (Linux ``/proc/self/clear_refs``).
    """
    cmd = [sys.executable, __file__, "--child-load", str(path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _child_load(path: str) -> None:
    import pandas  # noqa: F401  imported before the baseline so only the load is measured
    import pyarrow.parquet  # noqa: F401

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM (peak RSS) to the current RSS
    except OSError:
        pass
    before = _proc_status_mb("VmRSS")
    ds = load_file(path, symbol="BENCH")
    peak = _proc_status_mb("VmHWM")
    if before is None or peak is None:  # no /proc: fall back to the lifetime peak
        print(maxrss_mb())
    else:
        print(peak - before)
    del ds


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child-load", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load is not None:  # subprocess mode for load_peak_rss_mb
        _child_load(args.child_load)
        return
    n = args.bars
    print(
        f"data bench: {n:,} bars, best of {args.repeat}, pid {os.getpid()}, cpus {os.cpu_count()}"
    )

    t_gen, ds = timed(lambda: gbm(n, seed=0), 1)
    print(f"generate {'gbm':<18} {t_gen:8.3f} s")
    for gen in (regime_switching, jump_diffusion, ornstein_uhlenbeck):
        t, _ = timed(lambda g=gen: g(n, seed=0), 1)
        print(f"generate {gen.__name__:<18} {t:8.3f} s")

    with tempfile.TemporaryDirectory() as tmp:
        frame = ds.to_frame().reset_index()
        frame["timestamp"] = ds.timestamps // 1_000_000  # ccxt-style integer milliseconds
        frame = frame[["timestamp", "open", "high", "low", "close", "volume"]]
        csv_path, pq_path = Path(tmp) / "bench.csv", Path(tmp) / "bench.parquet"
        t0 = time.perf_counter()
        frame.to_csv(csv_path, index=False)
        frame.to_parquet(pq_path, index=False)
        t_write = time.perf_counter() - t0
        del frame
        csv_mb, pq_mb = csv_path.stat().st_size / 2**20, pq_path.stat().st_size / 2**20
        sizes = f"csv {csv_mb:.1f} MB, parquet {pq_mb:.1f} MB"
        print(f"write csv+parquet       {t_write:8.3f} s   ({sizes})")

        t_csv, loaded = timed(lambda: load_file(csv_path, symbol="BENCH"), args.repeat)
        assert len(loaded) == n
        print(f"load_csv                {t_csv:8.3f} s   ({n / t_csv / 1e6:.2f} M bars/s)")
        t_pq, loaded = timed(lambda: load_file(pq_path, symbol="BENCH"), args.repeat)
        assert len(loaded) == n
        print(f"load_parquet            {t_pq:8.3f} s   ({n / t_pq / 1e6:.2f} M bars/s)")
        arrays_mb = loaded.ohlcv.nbytes / 2**20 + loaded.timestamps.nbytes / 2**20
        peak_csv = traced_peak_mb(lambda: load_file(csv_path, symbol="BENCH"))
        peak_pq = traced_peak_mb(lambda: load_file(pq_path, symbol="BENCH"))
        rss_csv = load_peak_rss_mb(csv_path)
        rss_pq = load_peak_rss_mb(pq_path)
        print(f"result arrays           {arrays_mb:8.1f} MB")
        print(
            f"load_csv peak RSS       {rss_csv:8.1f} MB above pre-load ({peak_csv:.1f} MB traced)"
        )
        print(f"load_parquet peak RSS   {rss_pq:8.1f} MB above pre-load ({peak_pq:.1f} MB traced)")

    try:
        from envs.features import compute_features

        t_feat, feats = timed(lambda: compute_features(loaded), args.repeat)
        peak_feat = traced_peak_mb(lambda: compute_features(loaded))
        shape = tuple(feats.values.shape)
        print(f"compute_features        {t_feat:8.3f} s   values {shape} {feats.values.dtype}")
        print(f"traced peak features    {peak_feat:8.1f} MB ({len(feats.names)} features)")
    except Exception as exc:  # another team's module: report, never crash the data figures
        print(f"features: not available ({type(exc).__name__}: {exc})")

    print(f"process peak RSS        {maxrss_mb():8.1f} MB")


if __name__ == "__main__":
    main()
