"""Run logs: `metrics.jsonl` (one JSON object per logged step), TensorBoard events, a progress line."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


def _scalar(v: Any) -> float:
    return float(v)


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files under `workdir/tb`.

    TensorBoard writing uses `tf.summary` (tensorflow-cpu is a dependency of tfds anyway); if it
    cannot be imported the JSON log is still written. `JAXCV_TENSORBOARD=0` turns it off (importing
    TensorFlow costs seconds at start-up; the test suite sets it).
    """

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool | None = None):
        if tensorboard is None:
            tensorboard = os.environ.get("JAXCV_TENSORBOARD", "1") != "0"
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                import tensorflow as tf

                tf.config.set_visible_devices([], "GPU")
                self._tf = tf
                self._tb = tf.summary.create_file_writer(str(Path(workdir) / "tb"))
            except Exception as e:  # noqa: BLE001 - logging must not stop training
                logging.warning("TensorBoard logging disabled: %s", e)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {}
        for k, v in metrics.items():
            try:
                scalars[k] = _scalar(v)
            except (TypeError, ValueError):
                continue
        record = {"step": int(step), "split": split, **{k: v for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tb is not None:
            with self._tb.as_default(step=int(step)):
                for k, v in scalars.items():
                    if math.isfinite(v):
                        self._tf.summary.scalar(f"{split}/{k}", v)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of `workdir/metrics.jsonl`."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A one-line progress report: step, loss, steps/s and ETA."""

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self.t0 = time.perf_counter()
        self.s0 = start_step
        self.last_t, self.last_s = self.t0, start_step

    def line(self, step: int, metrics: dict[str, float]) -> str:
        now = time.perf_counter()
        rate = (step - self.last_s) / max(now - self.last_t, 1e-9)
        overall = (step - self.s0) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / overall if overall > 0 else float("inf")
        self.last_t, self.last_s = now, step
        terms = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "loss")
        return (
            f"step {step}/{self.total} loss={metrics.get('loss', float('nan')):.4f} {terms} "
            f"| {rate:.2f} steps/s | ETA {_fmt(eta)}"
        )

    def print(self, step: int, metrics: dict[str, float]) -> None:
        print(self.line(step, metrics), file=sys.stdout, flush=True)


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
