"""Preemption: SIGTERM/SIGINT/kill -9 of a CLI run, and a signal during a checkpoint write; the resumed
run ends bit-identical to an uninterrupted one. Subprocess tests run `python -m jaxcv.main` as a user would."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from reliability_util import (
    INPROC,
    Live,
    assert_identical,
    config,
    params_at,
    params_tree,
    run_main,
    saved_steps,
)

from jaxcv import checkpoint as ckpt
from jaxcv import train

# ----------------------------------------------------------------------------------------------------
# 1. Preemption
# ----------------------------------------------------------------------------------------------------

STEPS, EVERY = 40, 10  # subprocess runs: 40 steps, a periodic checkpoint every 10
RUN_FLAGS = (
    f"--config.num_train_steps={STEPS}",
    "--config.log_every=1",
    f"--config.checkpoint_every={EVERY}",
    "--config.checkpoint.keep=5",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, np.ndarray]:
    """Final params of a run that nothing interrupts, with the config the CLI runs get from RUN_FLAGS
    (run in this process: the same program on the same CPU gives the same bits)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    c = config(
        "synthetic_classification",
        num_train_steps=STEPS,
        log_every=1,
        checkpoint_every=EVERY,
        checkpoint__keep=5,
    )
    assert train.train_and_evaluate(c, workdir)
    assert saved_steps(workdir)[-1] == STEPS
    return params_at(workdir, STEPS)


def _resumed_from(run: Live) -> int:
    m = re.search(rf"resumed from \S+/checkpoints/(\d+); step (\d+) of {STEPS}", run.text)
    assert m and m.group(1) == m.group(2), run.text
    return int(m.group(1))


def _progress(run: Live) -> list[int]:
    return [int(m.group(1)) for line in run.lines if (m := re.match(rf"step (\d+)/{STEPS} ", line))]


def _signal_after_progress(workdir: Path, sig: signal.Signals) -> int:
    """Starts a run, sends `sig` once it has trained two more steps; checks it saved and exited cleanly."""
    run = Live(workdir, *RUN_FLAGS)
    run.wait_for(lambda: len(_progress(run)) >= 2)
    run.proc.send_signal(sig)
    rc = run.finish()
    assert rc == 0, run.text
    m = re.search(rf"signal {int(sig)}: saved checkpoint at step (\d+); exiting", run.text)
    assert m, run.text
    step = int(m.group(1))
    assert max(_progress(run)) <= step < STEPS, run.text  # saved where it stopped, during training
    assert saved_steps(workdir)[-1] == step
    assert "Traceback" not in run.text and "final eval" not in run.text
    assert not (workdir / "eval" / "metrics.json").exists()
    return step


@pytest.mark.slow
def test_preempted_by_sigterm_sigint_and_kill9_resumes_bit_identical(tmp_path: Path, uninterrupted):
    """One run, preempted three times: SIGTERM and SIGINT save the current step and exit 0; kill -9 loses
    the steps since the last periodic save. Each rerun resumes where the last left a checkpoint, and the
    finished run's params are bit-identical to the uninterrupted run's."""
    s1 = _signal_after_progress(tmp_path, signal.SIGTERM)

    run = Live(tmp_path, *RUN_FLAGS)  # resumes, and gets SIGINT (Ctrl-C)
    run.wait_for(lambda: len(_progress(run)) >= 2)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 0, run.text
    assert _resumed_from(run) == s1
    m = re.search(rf"signal {int(signal.SIGINT)}: saved checkpoint at step (\d+); exiting", run.text)
    assert m, run.text
    s2 = int(m.group(1))
    assert s1 < s2 < STEPS and saved_steps(tmp_path)[-1] == s2

    run = Live(tmp_path, *RUN_FLAGS)  # resumes, and is killed right after its next periodic save
    next_save = (s2 // EVERY + 1) * EVERY
    assert next_save < STEPS, "the SIGINT came too late to test kill -9"
    run.wait_for((tmp_path / "checkpoints" / str(next_save) / ckpt.DIGEST_FILE).exists)
    run.proc.kill()  # SIGKILL: no handler runs, nothing is saved
    assert run.finish() == -signal.SIGKILL
    assert _resumed_from(run) == s2
    durable = saved_steps(tmp_path)[-1]
    assert durable % EVERY == 0 and durable >= next_save
    assert max(_progress(run)) - durable <= EVERY  # lost at most the steps since the last save

    proc = run_main(tmp_path, *RUN_FLAGS)  # finishes
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"resumed from {tmp_path}/checkpoints/{durable}; step {durable} of {STEPS}" in proc.stdout, (
        proc.stdout
    )
    assert "final eval" in proc.stdout
    assert_identical(params_at(tmp_path, STEPS), uninterrupted)


@pytest.mark.parametrize(
    "sig,at_step", [(signal.SIGTERM, 2), (signal.SIGINT, 6)], ids=["SIGTERM@2", "SIGINT@final"]
)
def test_signal_during_checkpoint_write(tmp_path: Path, monkeypatch, capsys, inproc_reference, sig, at_step):
    original = ocp.StandardCheckpointHandler.async_save
    fired: list[str] = []

    def async_save(self, directory, *args, **kwargs):
        if not fired and f"/checkpoints/{at_step}.orbax-checkpoint-tmp" in str(directory):
            fired.append(str(directory))
            os.kill(os.getpid(), sig)  # handled by the trainer's handler while this write is in progress
        return original(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", async_save)
    c = config("synthetic_classification", **INPROC)
    assert train.train_and_evaluate(c, tmp_path) == {}  # stopped by the signal, cleanly
    assert fired, "the signal was never sent"
    out = capsys.readouterr().out
    stop_step = at_step + 1 if at_step < 6 else 6  # the loop notices the flag after the next step
    assert f"signal {int(sig)}: saved checkpoint at step {stop_step}; exiting" in out, out
    assert saved_steps(tmp_path)[-1] == stop_step
    assert at_step in saved_steps(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    assert not (tmp_path / "eval" / "metrics.json").exists()  # a final signal skips the final eval only
    # the checkpoint written under the signal restores and matches its checksums
    assert ckpt.verify_digest(tmp_path / "checkpoints" / str(at_step), params_tree(tmp_path, at_step)) == []
    monkeypatch.undo()
    assert train.train_and_evaluate(c, tmp_path)  # resumes and finishes, evaluation included
    assert f"resumed from {tmp_path}/checkpoints/{stop_step}" in capsys.readouterr().out
    assert (tmp_path / "eval" / "metrics.json").exists()
    assert_identical(params_at(tmp_path, 6), params_at(inproc_reference, 6))
