"""Search hyperparameters with Optuna: ``python scripts/tune_agent.py agent=sac env=arbitrage``.

Each trial trains in its own sub-directory of the run directory; ``study.json`` holds the best
parameters and every trial's outcome. See ``agents/tuning.py``.
"""

from __future__ import annotations

import json
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.tuning import tune
from envs.errors import ConfigError, DataError


@hydra.main(version_base="1.3", config_path="../configs", config_name="tune")
def main(cfg: DictConfig) -> None:
    """Run the study and print the best trial."""
    try:
        summary = tune(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary["best"], indent=2, default=str))


if __name__ == "__main__":
    main()
