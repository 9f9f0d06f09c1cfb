"""Backtest replay equals the env's evaluation of the same policy on the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_runner import _train  # tests/ is on sys.path (rootdir-relative, no package)

from agents.backtest import paper_trade, run_backtest, save_chart
from agents.evaluation import agent_policy, evaluate_policy
from agents.runner import PolicyRunner
from envs.data import gbm
from envs.market_env import MarketTradingEnv


@pytest.fixture(scope="module")
def q_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("q_run_bt"), "qlearning", [])


def test_replay_matches_env_evaluation(q_run: Path, tmp_path: Path) -> None:
    runner = PolicyRunner.from_run(q_run, device="cpu")
    ds = gbm(400, seed=11)
    env = MarketTradingEnv(
        dataset=ds,
        scaler=runner.scaler,
        random_start=False,
        episode_length=None,
        **runner.env_kwargs,
    )
    expected = evaluate_policy(agent_policy(runner.agent), env, 1, seed=0)
    result = run_backtest(runner, ds)
    got = result.metrics[next(iter(result.metrics))]
    assert result.first_bar == env.setup.arrays.first_decision
    for key in ("return", "sharpe", "sortino", "max_drawdown", "calmar", "turnover"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    assert set(result.metrics) >= {"buy_and_hold", "flat"}
    assert result.metrics["flat"]["return"] == 0.0
    assert len(result.signals) == len(ds)
    png = save_chart(result, tmp_path / "bt.png")
    assert png.stat().st_size > 1000
    assert '"metrics"' in result.to_json()


def test_paper_trade_journals_signals_and_fills(q_run: Path, tmp_path: Path) -> None:
    runner = PolicyRunner.from_run(q_run, device="cpu")
    lines: list[str] = []
    summary = paper_trade(runner, gbm(120, seed=4), tmp_path / "j.csv", echo=lines.append)
    rows = (tmp_path / "j.csv").read_text().splitlines()
    assert len(lines) == 120 and rows[0].startswith("kind,")
    assert sum(r.startswith("signal") for r in rows) == 120
    assert sum(r.startswith("fill") for r in rows) == summary["fills"]
    assert np.isfinite(summary["final_value"])
