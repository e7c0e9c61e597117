"""Timing shared by the benchmarks: contenders race alternately, each keeps its best round."""

from __future__ import annotations

import time
from collections.abc import Callable


def race(ours: Callable[[], object], reference: Callable[[], object], rounds: int) -> tuple[float, object, float, object]:
    """Best time and result of each, run alternately so both see the same machine state.

    The best of several rounds is the run least disturbed by other load on a shared machine.
    """
    best = [float("inf"), float("inf")]
    results: list[object] = [None, None]
    for _ in range(rounds):
        for i, function in enumerate((ours, reference)):
            started = time.perf_counter()
            results[i] = function()
            best[i] = min(best[i], time.perf_counter() - started)
    return best[0], results[0], best[1], results[1]
