"""Process settings for a bot loop around a runner (issue 8: on_bar p99 latency).

Measured with ``bench/runner.py`` (figures in its output): after loading a run the interpreter
tracks about 320k objects (torch, the model, the data), and a full (generation 2) collection
over them takes about 0.35 s. Young collections during the loop are rare and short (2 in 1,800
bars, < 0.1 ms), but a long-running bot eventually meets a full collection inside a call: a
0.35 s stall. ``gc.freeze()`` after loading and warm-up moves every object alive then into a
permanent generation the collector never scans (a full collection then takes ~0.01 ms), while
objects created during the loop are still collected normally. One torch intra-op thread: one
observation per call is far too small to split, and handing it to a pool only adds latency.
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["prepare_bot_loop"]


def prepare_bot_loop(torch_threads: int | None = 1) -> dict[str, Any]:
    """Settle the process for a latency-sensitive loop; call once after loading and warm-up.

    Collects garbage, then ``gc.freeze()`` (see the module docstring), and sets torch's
    intra-op threads (None: leave them). Objects created afterwards are collected as usual;
    call it again after loading something large (another run, a dataset).

    Args:
        torch_threads: ``torch.set_num_threads`` value, or None.

    Returns:
        ``frozen_objects`` (objects moved to the permanent generation) and
        ``full_collection_ms`` (what a full collection cost just before the freeze).
    """
    if torch_threads is not None:
        import torch

        torch.set_num_threads(int(torch_threads))
    t0 = time.perf_counter()
    gc.collect()
    full_ms = (time.perf_counter() - t0) * 1e3
    gc.freeze()
    return {"frozen_objects": gc.get_freeze_count(), "full_collection_ms": full_ms}
