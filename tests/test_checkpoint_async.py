"""Asynchronous checkpoints (one orbax manager): a save returns before its files are committed and the
step loop trains on meanwhile; kill -9 during a save leaves a workdir that resumes bit-identically; the
preservation policy keeps the latest `keep` steps and the best by `checkpoint.best_metric`, nothing else."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from reliability_util import (
    INPROC,
    ROOT,
    SMOKE,
    assert_identical,
    config,
    main_env,
    params_at,
    params_tree,
    run_main,
    saved_steps,
)

from jaxcv import checkpoint as ckpt
from jaxcv import train

GUARD_S = 240  # only against a deadlock: no assertion depends on how long anything takes


def _tmp_dirs(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def _hold_commit(monkeypatch, step: int, release: threading.Event, held: list[bool]) -> None:
    """The commit of `step`'s checkpoint (orbax's hook before the rename of its tmp folder) waits for
    `release`; `held` records whether `release` came (True) or the guard ran out."""
    original = ckpt.Checkpoints._before_commit

    def before_commit(self):
        if self._pending is not None and self._pending[0] == step:
            held.append(release.wait(GUARD_S))
        original(self)

    monkeypatch.setattr(ckpt.Checkpoints, "_before_commit", before_commit)


def test_save_returns_before_the_checkpoint_is_committed(tmp_path: Path, monkeypatch):
    release, held = threading.Event(), []
    _hold_commit(monkeypatch, 1, release, held)
    checkpoints = ckpt.Checkpoints(tmp_path, keep=2)
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(1)}
    assert checkpoints.save(1, state)
    # returned while orbax's background thread holds the write: only the tmp folder exists
    assert _tmp_dirs(tmp_path) == ["1.orbax-checkpoint-tmp"] and saved_steps(tmp_path) == []
    assert not checkpoints.save(1, state)  # a step being saved is not saved twice
    release.set()
    checkpoints.wait_until_finished()
    assert held == [True] and saved_steps(tmp_path) == [1] and _tmp_dirs(tmp_path) == []
    assert ckpt.verify_digest(tmp_path / "checkpoints" / "1", params_tree(tmp_path, 1)) == []
    assert (tmp_path / "checkpoints" / "1" / ckpt.DIGEST_FILE).exists()  # committed with the arrays
    checkpoints.close()


def test_step_loop_trains_on_while_a_save_is_written(tmp_path: Path, monkeypatch, inproc_reference):
    """The commit of the step-2 checkpoint is held until the loop has checked step 3's loss (it runs
    while step 4 is computed): a loop that waited for the disk would never get there."""
    release, held = threading.Event(), []
    _hold_commit(monkeypatch, 2, release, held)
    checked = []
    original = train._check_finite

    def check_finite(step, metrics, skip=False):
        if step >= 3 and not release.is_set():
            checked.append((step, _tmp_dirs(tmp_path), saved_steps(tmp_path)))
            release.set()
        return original(step, metrics, skip)

    monkeypatch.setattr(train, "_check_finite", check_finite)
    assert train.train_and_evaluate(config("synthetic_classification", **INPROC), tmp_path)
    assert held == [True], "the step loop waited for the checkpoint write"
    assert checked[0] == (3, ["2.orbax-checkpoint-tmp"], []), checked  # step 3 ran, 2 not committed yet
    assert saved_steps(tmp_path) == [2, 4, 6]
    for step in (2, 4, 6):
        assert ckpt.verify_digest(tmp_path / "checkpoints" / str(step), params_tree(tmp_path, step)) == []
    assert_identical(params_at(tmp_path, 6), params_at(inproc_reference, 6))


# ----------------------------------------------------------------------------------------------------
# kill -9 during an asynchronous save
# ----------------------------------------------------------------------------------------------------

STEPS, EVERY, HELD = 40, 10, 20
RUN_FLAGS = (f"--config.num_train_steps={STEPS}", "--config.log_every=1", f"--config.checkpoint_every={EVERY}",
             "--config.checkpoint.keep=5")
# `python -m jaxcv.main`, but the commit of checkpoint HELD never comes: the process is killed in the save.
HOLDING_MAIN = f"""
import runpy, sys, threading
from jaxcv import checkpoint as ckpt
original = ckpt.Checkpoints._before_commit
def before_commit(self):
    if self._pending is not None and self._pending[0] == {HELD}:
        threading.Event().wait()
    original(self)
ckpt.Checkpoints._before_commit = before_commit
sys.argv = ["jaxcv.main", *sys.argv[1:]]
runpy.run_module("jaxcv.main", run_name="__main__")
"""


def _uninterrupted(workdir: Path) -> dict[str, np.ndarray]:
    c = config("synthetic_classification", num_train_steps=STEPS, log_every=1, checkpoint_every=EVERY,
               checkpoint__keep=5)
    assert train.train_and_evaluate(c, workdir)
    return params_at(workdir, STEPS)


@pytest.mark.slow
def test_kill9_during_async_save_resumes_bit_identical(tmp_path: Path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-c", HOLDING_MAIN, f"--config={SMOKE}", f"--workdir={workdir}", *RUN_FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=main_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    progress = lambda: [int(m.group(1)) for line in list(lines) if (m := re.match(rf"step (\d+)/{STEPS} ", line))]
    seen = threading.Event()

    def watch() -> None:  # the save of HELD is in progress and the loop has trained past it
        while proc.poll() is None and not seen.is_set():
            if _tmp_dirs(workdir) == [f"{HELD}.orbax-checkpoint-tmp"] and max(progress(), default=0) > HELD:
                seen.set()
            seen.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ok = seen.wait(GUARD_S)
    proc.kill()  # SIGKILL: in the middle of the save of HELD
    assert proc.wait(60) == -signal.SIGKILL
    reader.join(10)
    assert ok, "".join(lines)[-3000:]
    assert saved_steps(workdir) == [EVERY] and _tmp_dirs(workdir) == [f"{HELD}.orbax-checkpoint-tmp"]

    reference = _uninterrupted(tmp_path / "uninterrupted")  # meanwhile nothing runs: the CPU is shared
    done = run_main(workdir, *RUN_FLAGS)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/{EVERY}; step {EVERY} of {STEPS}" in done.stdout, done.stdout
    assert "corrupt" not in done.stdout and _tmp_dirs(workdir) == []
    assert_identical(params_at(workdir, STEPS), reference)


# ----------------------------------------------------------------------------------------------------
# retention
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "min"])
def test_keeps_the_latest_n_and_the_best_nothing_else(tmp_path: Path, mode: str):
    sign = 1.0 if mode == "max" else -1.0
    checkpoints = ckpt.Checkpoints(tmp_path, keep=2, best_metric="acc", mode=mode)
    state = lambda step: {"w": jnp.full((3,), float(step)), "step": jnp.int32(step)}
    for step in range(1, 7):
        checkpoints.save(step, state(step))
        if step in (2, 3):  # evaluated steps that are saved already: the metric is added, nothing written twice
            checkpoints.save_best(step, state(step), {"acc": sign * (0.9 if step == 2 else 0.5), "other": 1.0})
        checkpoints.wait_until_finished()
        if step == 4:
            assert saved_steps(tmp_path) == [2, 3, 4]  # the latest two and the best
    assert saved_steps(tmp_path) == [2, 5, 6] and checkpoints.best_step() == 2
    checkpoints.save_best(7, state(7), {"acc": sign * 0.95})  # a new best, not saved yet: saved with its metric
    checkpoints.save_best(8, state(8), {"acc": sign * 0.1})  # not the best, not a periodic step: not saved
    checkpoints.save_best(6, state(6), {"acc": sign * 0.2})  # evaluated after its save
    checkpoints.close()
    assert saved_steps(tmp_path) == [6, 7] and _tmp_dirs(tmp_path) == []
    reopened = ckpt.Checkpoints(tmp_path, keep=2, best_metric="acc", mode=mode)
    assert reopened.best_step() == 7 and reopened.manager.metrics(7) == {"acc": sign * 0.95}
    for step in (6, 7):
        assert ckpt.verify_digest(tmp_path / "checkpoints" / str(step), params_tree(tmp_path, step)) == []
        assert np.array_equal(params_tree(tmp_path, step)["w"], np.full((3,), float(step)))
    reopened.close()
    with pytest.raises(KeyError, match="checkpoint.best_metric 'acc' is not an eval metric; available: loss"):
        ckpt.Checkpoints(tmp_path / "other", best_metric="acc").save_best(1, state(1), {"loss": 1.0})


def test_init_from_reads_the_best_step_then_the_latest(tmp_path: Path):
    """`load_variables` (init_from) prefers the best evaluated step, by the metric and mode of the
    workdir's config.json, over a later one."""
    checkpoints = ckpt.Checkpoints(tmp_path, keep=3, best_metric="acc", mode="min")
    for step, acc in ((1, 0.3), (2, 0.1), (3, 0.2)):
        tree = {"params": {"w": jnp.full((2,), float(step))}, "batch_stats": {}}
        checkpoints.save(step, tree)
        checkpoints.save_best(step, tree, {"acc": acc})
    checkpoints.close()
    (tmp_path / "config.json").write_text('{"checkpoint": {"best_metric": "acc", "best_mode": "min"}}')
    assert np.array_equal(ckpt.load_variables(tmp_path)["params"]["w"], [2.0, 2.0])
    (tmp_path / "config.json").unlink()  # without it: the latest
    assert np.array_equal(ckpt.load_variables(tmp_path)["params"]["w"], [3.0, 3.0])
