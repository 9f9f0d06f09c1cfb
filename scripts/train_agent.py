"""Train an agent on an environment: ``python scripts/train_agent.py agent=sac env=arbitrage``.

A thin Hydra entry point: composition, overrides and ``-m`` multiruns come from Hydra; the work is
done by ``agents.trainer.train``. Bad config values stop the run before training with one line
naming the field. Returns the best validation score, so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.trainer import best_validation_score, train
from envs.errors import ConfigError, DataError


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Compose the config, train, and return the best validation score."""
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = train(cfg, run_dir)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return best_validation_score(metrics)


if __name__ == "__main__":
    main()
