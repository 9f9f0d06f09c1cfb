"""Learned dynamics for model-based RL: probabilistic ensembles, their training, imagined
rollouts with trajectory sampling, and the trading-aware split between learned market dynamics
and exact accounting. Torch only; imports nothing of ours but ``envs`` errors."""

from world_models.dynamics import DynamicsModel, EnsembleDynamics
from world_models.ensemble import EnsembleConfig, EnsembleLinear, GaussianEnsemble, gaussian_nll
from world_models.model_env import PROPAGATIONS, ModelEnv, TerminationFn
from world_models.normalization import Normalizer
from world_models.trading import KnownDynamics, StateSplit, TradingAwareDynamics
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
    "ModelEnv",
    "Normalizer",
    "StateSplit",
    "TerminationFn",
    "TradingAwareDynamics",
    "gaussian_nll",
    "train_ensemble",
]
