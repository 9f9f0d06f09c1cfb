"""Shared checks on the observations the envs and assemblers return."""

from __future__ import annotations

import numpy as np


def is_fresh_block(block: np.ndarray) -> bool:
    """Whether ``block`` owns its memory or is a view of a 1-D array that does.

    The second case is the Dict layout's row blocks (``envs.observation._BarAssembler``): one
    fresh copy of the blocks' joint row, split into views. A view of a source array (2-D, one
    row per bar) or of anything else fails. Callers still check ``np.shares_memory`` against
    the sources, the state and other observations.
    """
    if block.flags.owndata:
        return True
    base = block.base
    return isinstance(base, np.ndarray) and base.flags.owndata and base.ndim == 1
