"""Paper-trade a trained run on a feed: ``python scripts/run_policy.py run=<run_dir> feed=<csv>``.

Market runs: feeds the CSV's bars one at a time at ``pace`` seconds, prints each signal and
journals signals and simulated fills to CSV (``agents.backtest.paper_trade``). Arbitrage runs: the
feed is a CSV of block snapshots (columns in ``agents.runner.snapshot_feed``: timestamp,
ref_price, spread, base_fee, native_price, pool<k>_base / pool<k>_quote reserves ...), played
through ``ArbitrageRunner.on_snapshot`` with simulated fills at each snapshot's state
(``agents.backtest.paper_trade_arbitrage``). Bad rows give HOLDs with reasons; a malformed file
stops before the loop with a ``DataError`` naming file, column and line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agents.backtest import load_replay_data, paper_trade, paper_trade_arbitrage
from agents.runner import PolicyRunner, prepare_bot_loop
from agents.runner.snapshot_feed import load_snapshot_csv
from envs.errors import ConfigError, DataError


@hydra.main(version_base="1.3", config_path="../configs", config_name="run_policy")
def main(cfg: DictConfig) -> None:
    """Load the run and the feed, then run the bot loop."""
    try:
        runner = PolicyRunner.from_run(
            str(cfg.run),
            device=str(cfg.device),
            policy=str(cfg.policy),
            limits=OmegaConf.to_container(cfg.limits),
            guards=OmegaConf.to_container(cfg.guards),
        )
        arbitrage = getattr(runner, "kind", "market") == "arbitrage"
        if arbitrage:
            snapshots = load_snapshot_csv(str(cfg.feed), runner.cfg.n_pools)
        else:
            feed = load_replay_data(str(cfg.feed))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    journal = Path(cfg.journal) if cfg.journal else Path(str(cfg.run)) / "paper_journal.csv"
    prepare_bot_loop()  # gc.freeze() of the loaded run, one torch thread (agents/runner/loop.py)
    if arbitrage:
        totals = paper_trade_arbitrage(
            runner,
            snapshots,
            journal,
            pace=float(cfg.pace),
            max_snapshots=cfg.max_bars,
            quiet=bool(cfg.quiet),
        )
        print(
            f"\n{int(totals['snapshots'])} snapshots, {int(totals['trades'])} trades "
            f"({int(totals['fills'])} simulated fills), expected profit "
            f"{totals['expected_profit']:+.2f} after gas {totals['gas']:.2f}; inventory value "
            f"{totals['value_start']:.2f} -> {totals['value_end']:.2f} at the last reference "
            f"price (pnl {totals['pnl']:+.2f}); journal: {journal}"
        )
        return
    summary = paper_trade(
        runner, feed, journal, pace=float(cfg.pace), max_bars=cfg.max_bars, quiet=bool(cfg.quiet)
    )
    print(
        f"\nfinal value {summary['final_value']:.2f} (return {summary['return']:+.2%}), "
        f"{summary['fills']} fills; journal: {journal}"
    )


if __name__ == "__main__":
    main()
