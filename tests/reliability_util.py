"""Helpers of the failure-and-recovery tests (test_preemption, test_checkpoint_integrity, test_bad_inputs,
test_config_errors): configs with overrides, checkpoint readers, a compile counter, CLI runners, and the
shared in-process reference run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TEST_CACHE
from flax import traverse_util

from jaxcv import train
from jaxcv.config import set_path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "configs/synthetic_classification.py:smoke"


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def config(name: str, arg: str | None = "smoke", **overrides):
    """configs/NAME.py's config with `a__b=value` overrides (unlocked, so wrong types can be tested)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    return override(c, **overrides)


def override(c, **overrides):
    with c.unlocked():
        for key, value in overrides.items():
            set_path(c, key.replace("__", "."), value)
    return c


def saved_steps(workdir: Path, sub: str = "checkpoints") -> list[int]:
    d = workdir / sub
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def params_tree(workdir: Path, step: int, sub: str = "checkpoints") -> dict:
    """The saved tree of `workdir/sub/step` read with plain orbax (no jaxcv fallback involved)."""
    options = ocp.CheckpointManagerOptions(read_only=True)
    mgr = ocp.CheckpointManager((workdir / sub).absolute(), options=options)
    tree = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()
    return tree


def params_at(workdir: Path, step: int, sub: str = "checkpoints") -> dict[str, np.ndarray]:
    """Flat params of `workdir/sub/step`."""
    flat = traverse_util.flatten_dict(params_tree(workdir, step, sub)["params"], sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs (max |diff| {np.max(np.abs(a[k] - b[k]))})"


class CompileWatch:
    """Counts XLA lowerings/compilations (jax.monitoring events) while active."""

    EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")

    def __init__(self):
        self.active = False
        self.events: list[str] = []
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, name: str, *args, **kwargs) -> None:
        if self.active and name in self.EVENTS:
            self.events.append(name)

    def __enter__(self):
        self.events, self.active = [], True
        return self

    def __exit__(self, *exc):
        self.active = False


_WATCH = CompileWatch()


def main_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXCV_COMPILATION_CACHE=TEST_CACHE, PYTHONUNBUFFERED="1")
    env.pop("JAXCV_TRACEBACK", None)
    env.update(extra)
    return env


def run_main(
    workdir: Path, *flags: str, spec: str = SMOKE, timeout: int = 300, **env
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jaxcv.main", f"--config={spec}", f"--workdir={workdir}", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=main_env(**env), timeout=timeout)


class Live:
    """`python -m jaxcv.main` in the background; its merged output is collected by a reader thread."""

    def __init__(self, workdir: Path, *flags: str):
        cmd = [sys.executable, "-m", "jaxcv.main", f"--config={SMOKE}", f"--workdir={workdir}", *flags]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=main_env()
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 240.0) -> None:
        t0 = time.monotonic()
        while not predicate():
            if self.proc.poll() is not None:
                self._reader.join(5)
                if predicate():
                    return
                pytest.fail(f"run ended (rc={self.proc.returncode}) before the awaited event:\n" + self.text)
            if time.monotonic() - t0 > timeout:
                self.proc.kill()
                pytest.fail("timed out waiting:\n" + self.text)
            time.sleep(0.02)

    def finish(self, timeout: float = 240.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# In-process: a signal delivered while orbax is writing a checkpoint (from inside the handler's write,
# the temporary folder exists). The write must complete intact, then the run saves and exits.

INPROC = {"num_train_steps": 6, "checkpoint_every": 2, "log_every": 2, "checkpoint__keep": 3}


def make_inproc_reference(workdir: Path) -> Path:
    """A finished 6-step in-process run (checkpoints 2, 4, 6): reference params and a workdir to corrupt."""
    assert train.train_and_evaluate(config("synthetic_classification", **INPROC), workdir)
    assert saved_steps(workdir) == [2, 4, 6]
    return workdir
