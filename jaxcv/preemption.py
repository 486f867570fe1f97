"""Stopping a run cleanly on SIGTERM/SIGINT: the loop saves a checkpoint and exits; a rerun resumes it."""

from __future__ import annotations

import signal
from typing import Any

import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Raised inside an evaluation when SIGTERM/SIGINT asked the run to stop (see `_Preemption`)."""


class Preemption:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can save and exit cleanly.

    With `sync` (several processes) `requested()` is agreed on by all processes (an all-gather of
    the flag), so they stop at the same step and save the checkpoint together; every process must
    then call it equally often (once per step, once per eval batch).
    """

    def __init__(self, sync: bool = False):
        self.signum: int | None = None
        self.sync = sync
        self._old: dict[int, Any] = {}

    def requested(self) -> bool:
        flag = self.signum is not None
        if self.sync:
            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
        return flag

    def describe(self) -> str:
        return f"signal {self.signum}" if self.signum is not None else "preemption of another process"

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
