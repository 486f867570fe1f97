"""Shared pieces of the peer benchmarks (`sam.py`, `yolo.py`): JSON lines, the load average, and interleaved
timing, so both implementations of a pair see the same machine load."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def stats(times: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs": len(times)}


def alternate(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each function's `repeats` calls, interleaved, after `warmup` untimed calls of each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def parse_cases(parser: Any, text: str, known: tuple[str, ...]) -> list[str]:
    """`--only=a,b` -> ["a", "b"]; an unknown case is a usage error naming the known ones."""
    which = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(which) - set(known))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {','.join(known)}")
    return which
