"""Stopping a run cleanly on SIGTERM/SIGINT: the loop saves a checkpoint and exits; a rerun resumes it.

With several processes they must stop at the same step. That is agreed through jax's preemption sync
point (`multihost_utils.reached_preemption_sync_point`, as orbax's `reached_preemption`): a SIGTERM
reaches the notifier of jax's coordination service, which tells every process and picks a call that
all of them have not reached yet; no collective runs per step. jax's notifier is a C signal handler,
which Python's `signal.signal` would replace, so the Python handler that records the signal (for the
message and for SIGINT) passes it on to jax's handler, read with `sigaction`. Where that is not
possible (not Linux, the preemption service off) the processes fall back to an all-gather of the flag.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any

import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Raised inside an evaluation when SIGTERM/SIGINT asked the run to stop (see `Preemption`)."""


class _SigAction(ctypes.Structure):
    """glibc's `struct sigaction` on Linux (x86-64, aarch64); padded, sigaction writes no more."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ubyte * 128), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p), ("pad", ctypes.c_ubyte * 64)]


_SA_SIGINFO = 4


def _jax_sigterm_handler() -> tuple[Any, _SigAction] | None:
    """(callable, saved action) of the C handler installed for SIGTERM (jax's preemption notifier, when
    `jax.distributed` runs the preemption service); None where it cannot be read or called."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = _SigAction()
        if libc.sigaction(signal.SIGTERM, None, ctypes.byref(old)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    if old.handler in (None, 0, 1) or old.flags & _SA_SIGINFO:  # SIG_DFL, SIG_IGN, or a 3-argument handler
        return None
    return ctypes.CFUNCTYPE(None, ctypes.c_int)(old.handler), old


def _sync_point_available() -> bool:
    """Whether jax's preemption sync manager runs (`jax.distributed.initialize` with the preemption
    service, which is on by default); the probe's counter 0 is below every counter `requested` uses."""
    try:
        multihost_utils.reached_preemption_sync_point(0)
    except RuntimeError:
        return False
    return True


class Preemption:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can save and exit cleanly.

    With `sync` (several processes) `requested()` is True on all processes at the same call: jax's
    preemption sync point, counted in calls of `requested()` (train steps and eval batches), so every
    process must call it equally often (once per step, once per eval batch), as before.
    """

    def __init__(self, sync: bool = False):
        self.signum: int | None = None
        self.sync = sync
        self._calls = 0
        self._reached = False
        self._old: dict[int, Any] = {}
        self._jax: tuple[Any, _SigAction] | None = None  # jax's SIGTERM handler, to pass signals on

    def requested(self) -> bool:
        if not self.sync:
            return self.signum is not None
        if self._reached:
            return True
        if self._jax is not None:
            self._calls += 1
            self._reached = bool(multihost_utils.reached_preemption_sync_point(self._calls))
        else:  # no sync point: every process shares its flag at every call
            self._reached = bool(np.any(multihost_utils.process_allgather(np.int32(self.signum is not None))))
        return self._reached

    def describe(self) -> str:
        return f"signal {self.signum}" if self.signum is not None else "preemption of another process"

    def __enter__(self):
        if self.sync and _sync_point_available():
            self._jax = _jax_sigterm_handler()
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        if self._jax is not None:  # SIGINT too: jax's notifier knows SIGTERM only
            self._jax[0](signal.SIGTERM)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        if self._jax is not None and signal.SIGTERM in self._old:  # jax's notifier gets SIGTERM back
            ctypes.CDLL(None).sigaction(signal.SIGTERM, ctypes.byref(self._jax[1]), None)
