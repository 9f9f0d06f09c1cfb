"""Gymnasium environments for market trading and arbitrage (NumPy only, no torch import).

Importing this package registers ``MarketTrading-v0`` and ``Arbitrage-v0`` with string entry
points, so ``gymnasium.make("MarketTrading-v0")`` works after ``import envs``. The package name is
generic: another distribution may also install a top-level ``envs``; nothing here relies on
import order between them.
"""

from __future__ import annotations

import gymnasium

__all__ = ["register_envs"]


def register_envs() -> None:
    """Register our environment ids with Gymnasium (idempotent)."""
    registry = gymnasium.envs.registration.registry
    if "MarketTrading-v0" not in registry:
        gymnasium.register(
            id="MarketTrading-v0",
            entry_point="envs.market_env:MarketTradingEnv",
            vector_entry_point="envs.vector_market:MarketTradingVectorEnv",
        )
    if "Arbitrage-v0" not in registry:
        gymnasium.register(
            id="Arbitrage-v0",
            entry_point="envs.arbitrage_env:ArbitrageEnv",
            vector_entry_point="envs.vector_arbitrage:ArbitrageVectorEnv",
        )


register_envs()
