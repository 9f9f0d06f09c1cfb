"""Learned dynamics for model-based RL: probabilistic ensembles, their training, imagined
rollouts with trajectory sampling, and the trading-aware split between learned market dynamics
and exact accounting. Torch only; imports nothing of ours but ``envs`` (errors and the market
accounting spec)."""

from world_models.dynamics import DynamicsModel, EnsembleDynamics
from world_models.ensemble import EnsembleConfig, EnsembleLinear, GaussianEnsemble, gaussian_nll
from world_models.model_env import PROPAGATIONS, ModelEnv, TerminationFn
from world_models.normalization import Normalizer
from world_models.trading import (
    KnownDynamics,
    MarketAccounting,
    StateSplit,
    TradingAwareDynamics,
    market_dynamics_from_spec,
    market_trading_dynamics,
)
from world_models.training import EnsembleTrainConfig, FitResult, train_ensemble

__all__ = [
    "PROPAGATIONS",
    "DynamicsModel",
    "EnsembleConfig",
    "EnsembleDynamics",
    "EnsembleLinear",
    "EnsembleTrainConfig",
    "FitResult",
    "GaussianEnsemble",
    "KnownDynamics",
    "MarketAccounting",
    "ModelEnv",
    "Normalizer",
    "StateSplit",
    "TerminationFn",
    "TradingAwareDynamics",
    "gaussian_nll",
    "market_dynamics_from_spec",
    "market_trading_dynamics",
    "train_ensemble",
]
