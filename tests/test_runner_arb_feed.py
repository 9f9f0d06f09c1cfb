"""Arbitrage paper loop: snapshot CSV format, bad rows, malformed files, journal and fills."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runner_arbitrage import FixedPolicy, _train_arb  # tests/ is on sys.path

from agents.backtest import arbitrage_snapshot, paper_trade_arbitrage
from agents.runner import ArbitrageRunner, PolicyRunner
from agents.runner.snapshot_feed import load_snapshot_csv, save_snapshot_csv, snapshot_columns
from envs.arbitrage_env import ArbitrageEnv, build_config
from envs.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _episode_snapshots(seed: int = 3, blocks: int = 40) -> list[dict]:
    """Snapshots of an Arbitrage-v0 episode in which nobody of ours trades (the feed)."""
    env = ArbitrageEnv(episode_length=blocks, flatten=True)
    env.reset(seed=seed)
    scen, state = env.scenario_batch, env.state
    snaps = [arbitrage_snapshot(scen, state, row) for row in range(int(state.row0[0]))]
    prev = None
    noop = np.zeros(env.action_space.shape, dtype=np.float32)
    for _ in range(blocks):
        row = int(state.row0[0] + state.t[0])
        snaps.append(arbitrage_snapshot(scen, state, row, prev))
        prev = float(state.comp_rate[0])
        *_, truncated, _ = env.step(noop)
        if truncated:
            break
    return snaps


def _runner(action: list[float]) -> ArbitrageRunner:
    return ArbitrageRunner(policy=FixedPolicy(action), cfg=build_config("cex_dex"), flatten=True)


def test_csv_round_trip_gives_the_same_signals(tmp_path: Path) -> None:
    snaps = _episode_snapshots()
    path = save_snapshot_csv(tmp_path / "feed.csv", snaps, n_pools=1)
    header = path.read_text().splitlines()[0].split(",")
    assert header == snapshot_columns(1)
    loaded = load_snapshot_csv(path, n_pools=1)
    assert len(loaded) == len(snaps) and loaded[0]["_line"] == 2
    a, b = _runner([0.5, 0.2]), _runner([0.5, 0.2])
    for original, row in zip(snaps, loaded, strict=True):
        sa, sb = a.on_snapshot(original), b.on_snapshot(row)
        assert sa == sb
        if a.last_observation is not None:
            assert np.array_equal(a.last_observation, b.last_observation)


def test_paper_loop_journals_fills_and_holds_bad_rows(tmp_path: Path) -> None:
    snaps = _episode_snapshots(blocks=30)
    path = save_snapshot_csv(tmp_path / "feed.csv", snaps, n_pools=1)
    lines = path.read_text().splitlines()
    cols = lines[0].split(",")
    bad = {
        12: ("ref_price", "nan"),
        14: ("base_fee", "abc"),
        16: ("pool0_base", "-5"),
        18: ("ref_price", ""),
    }
    for line_no, (col, value) in bad.items():
        cells = lines[line_no - 1].split(",")
        cells[cols.index(col)] = value
        lines[line_no - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    runner = _runner([-1.0, 0.1])  # sell base to the pool whenever the gap allows
    printed: list[str] = []
    totals = paper_trade_arbitrage(
        runner, load_snapshot_csv(path, 1), tmp_path / "j.csv", echo=printed.append
    )
    with open(tmp_path / "j.csv", newline="") as f:
        journal = list(csv.DictReader(f))
    signals = [r for r in journal if r["kind"] == "signal"]
    fills = [r for r in journal if r["kind"] == "fill"]
    assert len(signals) == len(snaps) == totals["snapshots"] == len(printed)
    reasons = {int(r["line"]): r["reason"] for r in signals}
    assert "ref_price" in reasons[12] and "base_fee" in reasons[14]
    assert "reserves" in reasons[16] and "ref_price" in reasons[18]
    assert all(r["side"] == "HOLD" and r["reason"] for r in signals if int(r["line"]) in bad)
    assert totals["trades"] > 0 and len(fills) == totals["fills"] == 2 * totals["trades"]
    # The runner's inventory is the starting one plus the journaled fills.
    inv = np.asarray(runner.cfg.initial_balances, dtype=float)
    for r in fills:
        units = float(r["size"]) * (1 if r["side"] == "BUY" else -1)
        base, quote = (0, 1) if r["venue"] == "cex" else (2, 3)
        inv[base] += units
        inv[quote] -= units * float(r["price"]) + (float(r["gas"]) if r["gas"] else 0.0)
    np.testing.assert_allclose(runner.inventory, inv, rtol=1e-12, atol=1e-9)
    assert np.isfinite(totals["pnl"])
    # Expected profits are net of gas, and the fills realise them at the snapshot's state.
    assert totals["pnl"] == pytest.approx(totals["expected_profit"], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("timestamp,ref_price,base_fee,pool0_base\n1,2,3,4\n", r"line 1.*pool0_quote"),
        ("timestamp,ref_price,ref_price,base_fee,pool0_base,pool0_quote\n", r"'ref_price' .*twice"),
        ("timestamp,ref_price,base_fee,pool0_base,pool0_quote\n1,2,3,4,5\n1,2,3\n", "line 3"),
        ("timestamp,ref_price,base_fee,pool0_base,pool0_quote\n", "no snapshot rows"),
    ],
)
def test_malformed_files_raise_data_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        load_snapshot_csv(path, n_pools=1)
    assert "bad.csv" in str(info.value)
    with pytest.raises(DataError, match="not found"):
        load_snapshot_csv(tmp_path / "missing.csv", n_pools=1)


def test_epoch_timestamps_by_magnitude(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = ["1700000000", "1700000012000", "2023-11-14T23:13:44+01:00", "1700000036.5", "later"]
    body = "".join(f"{t},2500,20,1000,2500000\n" for t in rows)
    path.write_text("timestamp,ref_price,base_fee,pool0_base,pool0_quote\n" + body)
    got = [s["timestamp"] for s in load_snapshot_csv(path, 1)]
    assert got[4] == "later"  # left to the runner, which holds with a reason
    assert got[:2] == [1_700_000_000 * 10**9, 1_700_000_012 * 10**9]
    assert got[2] == 1_700_000_024 * 10**9 and got[3] == 1700000036.5


@pytest.fixture(scope="module")
def q_arb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_arb(tmp_path_factory.mktemp("q_arb_feed"), "qlearning", [])


def test_run_policy_script_on_an_arbitrage_run(q_arb: Path, tmp_path: Path) -> None:
    runner = PolicyRunner.from_run(q_arb, device="cpu")
    feed = save_snapshot_csv(tmp_path / "feed.csv", _episode_snapshots(blocks=20), 1)
    journal = tmp_path / "journal.csv"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_policy.py"),
            f"run={q_arb}",
            f"feed={feed}",
            f"journal={journal}",
            "quiet=true",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "snapshots" in out.stdout and journal.is_file()
    assert sum(1 for r in journal.read_text().splitlines() if r.startswith("signal")) == 28
    assert runner.cfg.n_pools == 1


cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "abc", "-1", "0", "1e400", "2500", "2024-01-01T00:00:00Z", " 7 "]),
    st.text(alphabet="0123456789.-eE:TZx ", max_size=12),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(cells, min_size=5, max_size=5), min_size=1, max_size=25))
def test_random_csv_cells_never_raise_in_the_loop(
    tmp_path_factory: pytest.TempPathFactory, rows: list
) -> None:
    """Any cell text in a well-formed file: the loop never raises, every row gives a signal
    with a reason, and the runner never sells more than it holds."""
    tmp = tmp_path_factory.mktemp("fuzz")
    header = "timestamp,ref_price,base_fee,pool0_base,pool0_quote"
    text = "\n".join([header, *(",".join(r) for r in rows)]) + "\n"
    (tmp / "feed.csv").write_text(text)
    try:
        snaps = load_snapshot_csv(tmp / "feed.csv", 1)
    except DataError:
        return  # e.g. only blank rows: a malformed file, refused before the loop
    runner = _runner([-1.0, 0.5])
    totals = paper_trade_arbitrage(runner, snaps, tmp / "j.csv", echo=None)
    assert totals["snapshots"] == len(snaps)
    with open(tmp / "j.csv", newline="") as f:
        signals = [r for r in csv.DictReader(f) if r["kind"] == "signal"]
    assert len(signals) == len(snaps) and all(r["reason"] for r in signals)
    assert all("internal error" not in r["reason"] for r in signals)
    assert np.all(runner.inventory >= -1e-9)
