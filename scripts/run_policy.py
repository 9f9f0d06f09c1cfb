"""Paper-trade a trained run on a feed: ``python scripts/run_policy.py run=<run_dir> feed=<csv>``.

Feeds the CSV's bars one at a time at ``pace`` seconds, prints each signal and journals signals
and simulated fills to CSV. The loop is ``agents.backtest.paper_trade``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agents.backtest import load_replay_data, paper_trade
from agents.runner import PolicyRunner
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
        if getattr(runner, "kind", "market") == "arbitrage":
            raise ConfigError(
                f"{cfg.run}: an arbitrage run trades block snapshots, not a bar feed; replay "
                "held-out episodes with scripts/backtest.py run=<run> or embed "
                "ArbitrageRunner.on_snapshot in your bot (README: Embedding the policy runner)"
            )
        feed = load_replay_data(str(cfg.feed))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    journal = Path(cfg.journal) if cfg.journal else Path(str(cfg.run)) / "paper_journal.csv"
    summary = paper_trade(
        runner, feed, journal, pace=float(cfg.pace), max_bars=cfg.max_bars, quiet=bool(cfg.quiet)
    )
    print(
        f"\nfinal value {summary['final_value']:.2f} (return {summary['return']:+.2%}), "
        f"{summary['fills']} fills; journal: {journal}"
    )


if __name__ == "__main__":
    main()
