"""The policy runner: a trained run inside a bot loop (see ``agents.runner.market``)."""

from agents.runner.arbitrage import ArbitrageRunner, SnapshotGuards
from agents.runner.limits import BarGuards, RiskLimits
from agents.runner.loop import prepare_bot_loop
from agents.runner.market import PolicyRunner
from agents.signals import BUY, HOLD, SELL, Fill, SignalLeg, TradeSignal

__all__ = [
    "BUY",
    "HOLD",
    "SELL",
    "ArbitrageRunner",
    "BarGuards",
    "Fill",
    "PolicyRunner",
    "RiskLimits",
    "SignalLeg",
    "SnapshotGuards",
    "TradeSignal",
    "prepare_bot_loop",
]
