"""Failure and recovery: preemption (SIGTERM/SIGINT/kill -9), corrupt checkpoints, bad inputs through the
real pipeline, the NaN guard from the CLI, config validation before compiling, and weights safety.

Subprocess tests run `python -m jaxcv.main` exactly as a user would; they share one config so the
persistent compilation cache (the tests' cache dir) makes every run after the first cheap.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TEST_CACHE, xla_flags
from flax import traverse_util
from PIL import Image

from jaxcv import checkpoint as ckpt
from jaxcv import train
from jaxcv.config import classification_config, segmentation_config
from jaxcv.data.base import IGNORE_INDEX, DataError
from jaxcv.logs import read_metrics

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
            node = c
            *parents, leaf = key.split("__")
            for p in parents:
                node = node[p]
            node[leaf] = value
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


# In-process: a signal delivered while orbax is writing a checkpoint (from inside the handler's write,
# the temporary folder exists). The write must complete intact, then the run saves and exits.

INPROC = {"num_train_steps": 6, "checkpoint_every": 2, "log_every": 2, "checkpoint__keep": 3}


@pytest.fixture(scope="module")
def inproc_reference(tmp_path_factory) -> Path:
    """A finished 6-step in-process run (checkpoints 2, 4, 6): reference params and a workdir to corrupt."""
    workdir = tmp_path_factory.mktemp("inproc_ref")
    assert train.train_and_evaluate(config("synthetic_classification", **INPROC), workdir)
    assert saved_steps(workdir) == [2, 4, 6]
    return workdir


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


# ----------------------------------------------------------------------------------------------------
# 2. Checkpoint integrity
# ----------------------------------------------------------------------------------------------------


def _files(step_dir: Path) -> list[Path]:
    return sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: (-p.stat().st_size, str(p)))


def truncate(step_dir: Path) -> None:
    for p in _files(step_dir)[:3]:  # the array data
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def bitflip(step_dir: Path) -> None:
    p = _files(step_dir)[0]
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # orbax restores this silently; only the CRC digest notices
    p.write_bytes(bytes(data))


def garble_metadata(step_dir: Path) -> None:
    (step_dir / "default" / "_METADATA").write_text('{"tree_metadata": garbage')


def empty_files(step_dir: Path) -> None:
    for p in _files(step_dir):
        p.write_bytes(b"")


@pytest.mark.parametrize("corrupt", [truncate, bitflip, garble_metadata, empty_files])
def test_corrupt_latest_falls_back_to_previous_and_ends_identical(
    tmp_path: Path, capsys, inproc_reference, corrupt
):
    workdir = tmp_path / "run"
    shutil.copytree(inproc_reference, workdir)
    corrupt(workdir / "checkpoints" / "6")
    c = config("synthetic_classification", **INPROC)
    assert train.train_and_evaluate(c, workdir)
    out = capsys.readouterr().out
    assert f"checkpoint {workdir}/checkpoints/6 is corrupt or incomplete" in out, out
    assert f"resumed from {workdir}/checkpoints/4; step 4 of 6" in out, out
    assert (workdir / "checkpoints_corrupt" / "6").is_dir()  # kept for inspection, out of resume's way
    assert saved_steps(workdir) == [2, 4, 6]  # step 6 was trained and saved again
    assert ckpt.verify_digest(workdir / "checkpoints" / "6", params_tree(workdir, 6)) == []
    assert_identical(params_at(workdir, 6), params_at(inproc_reference, 6))


def test_partial_writes_are_ignored(tmp_path: Path, capsys, inproc_reference):
    """Orbax writes into `<step>.orbax-checkpoint-tmp*` and renames when done: such leftovers of a save
    cut short are never read, nor reported as corrupt."""
    workdir = tmp_path / "run"
    shutil.copytree(inproc_reference, workdir)
    ckdir = workdir / "checkpoints"
    (ckdir / "6").rename(ckdir / "6.orbax-checkpoint-tmp-1700000000")
    truncate(ckdir / "6.orbax-checkpoint-tmp-1700000000")
    (ckdir / "8.orbax-checkpoint-tmp-1700000001" / "default").mkdir(parents=True)
    (ckdir / "8.orbax-checkpoint-tmp-1700000001" / "default" / "_METADATA").write_text("{")
    assert train.train_and_evaluate(config("synthetic_classification", **INPROC), workdir)
    out = capsys.readouterr().out
    assert f"resumed from {workdir}/checkpoints/4" in out and "corrupt" not in out, out
    assert not (workdir / "checkpoints_corrupt").exists()
    assert_identical(params_at(workdir, 6), params_at(inproc_reference, 6))


def test_all_checkpoints_corrupt_starts_over_with_a_warning(tmp_path: Path, capsys, inproc_reference):
    workdir = tmp_path / "run"
    shutil.copytree(inproc_reference, workdir)
    for step in (2, 4, 6):
        bitflip(workdir / "checkpoints" / str(step))
    trainer = train.Trainer(config("synthetic_classification", **INPROC), workdir)
    state, how = trainer.initial_state(ckpt.Checkpoints(workdir))
    out = capsys.readouterr().out
    assert how == "initialized from scratch"
    assert "no readable checkpoint left" in out
    assert sorted(p.name for p in (workdir / "checkpoints_corrupt").iterdir()) == ["2", "4", "6"]


def test_checkpoint_of_another_model_is_an_error_not_corruption(tmp_path: Path, inproc_reference):
    workdir = tmp_path / "run"
    shutil.copytree(inproc_reference, workdir)
    other = config("synthetic_classification", data__num_classes=5, **INPROC)  # a 5-way head
    trainer = train.Trainer(other, workdir)
    with pytest.raises(
        ckpt.IncompatibleCheckpointError, match=r"params/head/\w+: \(\d+, 4\) in the checkpoint vs"
    ):
        trainer.initial_state(ckpt.Checkpoints(workdir))
    assert saved_steps(workdir) == [2, 4, 6] and not (workdir / "checkpoints_corrupt").exists()


def test_load_variables_skips_a_corrupt_best_checkpoint(tmp_path: Path, capsys, inproc_reference):
    workdir = tmp_path / "run"
    shutil.copytree(inproc_reference, workdir)
    assert saved_steps(workdir, "best") == [6]
    bitflip(workdir / "best" / "6")
    params = traverse_util.flatten_dict(ckpt.load_variables(workdir)["params"], sep="/")
    assert f"checkpoint {workdir}/best/6 is corrupt" in capsys.readouterr().out
    assert_identical({k: np.asarray(v) for k, v in params.items()}, params_at(inproc_reference, 6))


# ----------------------------------------------------------------------------------------------------
# 3. Bad inputs, through source + transform + Loader (Trainer.loader) and the CLI
# ----------------------------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_image_folder(
    root: Path, classes=("a", "b"), per_class: int = 2, size: int = 40, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"{c}{i}.png", rng.integers(0, 256, (size, size + 4 * i, 3), dtype=np.uint8))


def add_bad_images(root: Path) -> tuple[Path, Path]:
    """A truncated PNG in class a and random bytes named .jpg in class b."""
    good = (root / "a" / "a0.png").read_bytes()
    truncated, garbage = root / "a" / "truncated.png", root / "b" / "garbage.jpg"
    truncated.write_bytes(good[: len(good) * 2 // 3])
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return truncated, garbage


def folder_config(train_dir: Path, val_dir: Path, bad_input: str = "fail", batch_size: int = 6):
    c = classification_config()
    c.model.name = "small_cnn"
    c.data.name = "image_folder"
    c.data.train_dir = str(train_dir)
    c.data.val_dir = str(val_dir)
    c.data.image_size = 32
    c.data.bad_input = bad_input
    c.data.num_threads = 2
    c.batch_size = c.eval_batch_size = batch_size
    c.num_train_steps, c.log_every, c.checkpoint_every = 2, 1, 100
    return c


FOLDER_CONFIG = """
from jaxcv.config import classification_config


def get_config(arg=None):  # what folder_config() builds, as a config file for the CLI
    c = classification_config()
    c.model.name = "small_cnn"
    c.data.name = "image_folder"
    c.data.train_dir = "{train}"
    c.data.val_dir = "{val}"
    c.data.image_size = 32
    c.data.bad_input = arg
    c.data.num_threads = 2
    c.batch_size = c.eval_batch_size = 6
    c.num_train_steps, c.log_every, c.checkpoint_every = 2, 1, 100
    c.lock()
    return c
"""


def epoch(loader, steps: int) -> list[dict[str, np.ndarray]]:
    it = loader.train_batches(0)
    return [next(it) for _ in range(steps)]


def test_corrupt_images_in_image_folder_fail_naming_the_file_or_are_skipped(tmp_path: Path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", seed=1)
    truncated, garbage = add_bad_images(tmp_path / "train")
    c = folder_config(tmp_path / "train", tmp_path / "val", "fail")
    loader = train.Trainer(c, tmp_path / "w").loader("train", train=True)
    assert (
        len(loader) == 6 and loader.global_batch_size == 6
    )  # one batch = the whole split, bad files included
    with pytest.raises(DataError, match=r"cannot read image .*(truncated\.png|garbage\.jpg)"):
        epoch(loader, 1)

    c = folder_config(tmp_path / "train", tmp_path / "val", "skip")
    loader = train.Trainer(c, tmp_path / "w").loader("train", train=True)
    (batch,) = epoch(loader, 1)
    assert batch["image"].shape == (6, 32, 32, 3) and np.isfinite(batch["image"]).all()
    assert len(loader.skipped) == 2
    named = {re.search(r"cannot read image (\S+):", s).group(1) for s in loader.skipped}
    assert named == {str(truncated), str(garbage)}
    epoch(loader, 3)  # later epochs do not read or count the known-bad files again
    assert len(loader.skipped) == 2

    # evaluation: a bad item's slot is filled by its neighbour but marked invalid, so nothing counts twice
    val_truncated, _ = add_bad_images(tmp_path / "val")
    loader = train.Trainer(c, tmp_path / "w").loader("validation", train=False)
    (batch,) = list(loader.eval_batches())
    files = [str(f) for f in loader.source.files]
    assert batch["valid"].tolist() == [
        f not in (str(val_truncated), str(tmp_path / "val/b/garbage.jpg")) for f in files
    ]
    assert len(loader.skipped) == 2


def test_image_folder_class_not_in_train_is_an_error(tmp_path: Path):
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", classes=("a", "b", "zebra"), seed=1)
    trainer = train.Trainer(folder_config(tmp_path / "train", tmp_path / "val"), tmp_path / "w")
    with pytest.raises(DataError, match=r"class folders \['zebra'\] are not among the classes"):
        trainer.loader("validation", train=False)


def test_cli_bad_image_message_and_skip_count_in_logs(tmp_path: Path):
    """`python -m jaxcv.main` prints the data error (file and problem), no traceback, exit 1; with
    data.bad_input=skip the trainer trains and logs `skipped_inputs`."""
    make_image_folder(tmp_path / "train")
    make_image_folder(tmp_path / "val", seed=1)
    truncated, garbage = add_bad_images(tmp_path / "train")
    spec = tmp_path / "folder_config.py"
    spec.write_text(FOLDER_CONFIG.format(train=str(tmp_path / "train"), val=str(tmp_path / "val")))
    fail = run_main(tmp_path / "fail", spec=f"{spec}:fail")
    assert fail.returncode == 1, fail.stdout + fail.stderr
    assert re.search(rf"\[jaxcv\] data error: cannot read image ({truncated}|{garbage}): ", fail.stderr), (
        fail.stderr
    )
    assert "Traceback" not in fail.stderr

    c = folder_config(tmp_path / "train", tmp_path / "val", "skip")
    assert train.train_and_evaluate(c, tmp_path / "skip")
    logged = [r["skipped_inputs"] for r in read_metrics(tmp_path / "skip") if r["split"] == "train"]
    assert logged == [2, 2], logged


def make_mask_folder(root: Path, n: int = 4, size: int = 40) -> tuple[Path, Path]:
    """CamVid layout with 3 classes; mask 1 holds an unknown value 7, mask 2 has another size."""
    rng = np.random.default_rng(0)
    (root / "codes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "codes.txt").write_text("sky\nroad\ncar\n")
    for i in range(n):
        _png(root / "images" / f"im{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        mask = rng.integers(0, 3, (size, size), dtype=np.uint8)
        if i == 1:
            mask[5, 5] = 7
        if i == 2:
            mask = mask[:30, :30]
        _png(root / "labels" / f"im{i}_P.png", mask)
    return root / "labels" / "im1_P.png", root / "labels" / "im2_P.png"


def mask_config(root: Path, bad_input: str, mismatch: str = "fail"):
    c = segmentation_config()
    c.model.name = "unet_resnet18"
    c.data.name = "mask_folder"
    c.data.train_dir = str(root)
    c.data.val_dir = str(root)
    c.data.mask_mismatch = mismatch
    c.data.image_size = 32
    c.data.bad_input = bad_input
    c.data.num_threads = 2
    c.batch_size = c.eval_batch_size = 4
    return c


def test_masks_with_unknown_values_or_other_size(tmp_path: Path):
    unknown, small = make_mask_folder(tmp_path / "data")
    loader = train.Trainer(mask_config(tmp_path / "data", "fail"), tmp_path / "w").loader("train", train=True)
    with pytest.raises(DataError) as e:
        epoch(loader, 1)
    assert f"mask {unknown}: value 7 is not a class id" in str(
        e.value
    ) or f"mask {small} is 30x30 but image" in str(e.value), str(e.value)

    loader = train.Trainer(mask_config(tmp_path / "data", "skip"), tmp_path / "w").loader("train", train=True)
    (batch,) = epoch(loader, 1)
    assert len(loader.skipped) == 2
    assert any(f"mask {unknown}: value 7" in s for s in loader.skipped)
    assert any(f"mask {small} is 30x30 but image" in s for s in loader.skipped)
    assert batch["mask"].shape == (4, 32, 32)
    assert set(np.unique(batch["mask"])) <= {0, 1, 2, IGNORE_INDEX}

    # data.mask_mismatch="resize" accepts the other size; the unknown value is still skipped
    loader = train.Trainer(mask_config(tmp_path / "data", "skip", "resize"), tmp_path / "w").loader(
        "train", True
    )
    epoch(loader, 1)
    assert len(loader.skipped) == 1 and "value 7" in loader.skipped[0]


def test_empty_split_fails_before_compiling(tmp_path: Path):
    c = config("synthetic_classification", data__num_val=0)
    with _WATCH as watch, pytest.raises(DataError, match=r"dataset SyntheticClassification.* is empty"):
        train.train_and_evaluate(c, tmp_path)
    assert not watch.events


# ----------------------------------------------------------------------------------------------------
# 4. NaN/Inf guard from the CLI
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_nonfinite_loss_message_and_last_good_checkpoint(tmp_path: Path):
    proc = run_main(
        tmp_path,
        "--config.num_train_steps=6",
        "--config.checkpoint_every=1",
        "--config.log_every=1",
        "--config.optimizer.name=sgd",
        "--config.optimizer.learning_rate=1e30",
        "--config.checkpoint.keep=10",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = re.search(
        r"\[jaxcv\] NonFiniteLossError: non-finite loss or gradient at step (\d+): .*loss=nan", proc.stderr
    )
    assert m, proc.stderr
    assert "Traceback" not in proc.stderr
    bad = int(m.group(1))
    good = saved_steps(tmp_path)
    assert good and max(good) < bad, (good, bad)
    c = config("synthetic_classification", optimizer__name="sgd", optimizer__learning_rate=1e30)
    trainer = train.Trainer(c, tmp_path)
    state, how = trainer.initial_state(ckpt.Checkpoints(tmp_path))  # verified against its checksums
    assert how.startswith(f"resumed from {tmp_path}/checkpoints/{max(good)}")
    assert int(state.step) == max(good)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(state.params))
    assert not (tmp_path / "checkpoints_corrupt").exists()


# ----------------------------------------------------------------------------------------------------
# 5. Config validation, before anything compiles
# ----------------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ("synthetic_classification", {"optimizer__name": "adamx"}, r"optimizer\.name='adamx'.*known: sgd"),
    ("synthetic_classification", {"schedule__name": "cosinus"}, r"schedule\.name='cosinus'.*known"),
    ("synthetic_classification", {"log_every": 0}, r"config\.log_every=0: must be >= 1"),
    ("synthetic_classification", {"dtype": "float8"}, r"config\.dtype='float8'"),
    ("synthetic_classification", {"dtype": "float64"}, r"config\.dtype='float64': needs 64-bit JAX"),
    ("synthetic_classification", {"data__bad_input": "ignore"}, r"data\.bad_input='ignore'"),
    ("shapes_unet", {"data__num_classes": 9}, r"data\.num_classes=9 but dataset 'shapes_segmentation' has 4"),
    ("synthetic_classification", {"freeze": ("backbonee",)}, r"prefix 'backbonee' matches no parameter path"),
    ("synthetic_classification", {"lr_multipliers": {"hiddn": 0.1}}, r"prefix 'hiddn' matches no parameter"),
    (
        "synthetic_classification",
        {"init_from": "/nonexistent/run"},
        r"init_from='/nonexistent/run' does not exist",
    ),
    ("shapes_retinanet", {"loss__box_loss": "iou"}, r"loss\.box_loss='iou'.*known: l1, smooth_l1, giou"),
    (
        "shapes_retinanet",
        {"data__image_size": 100},
        r"data\.image_size=100 must be divisible by the largest stride",
    ),
]


@pytest.mark.parametrize(
    "name,overrides,message", BAD_CONFIGS, ids=[next(iter(o)) for _, o, _ in BAD_CONFIGS]
)
def test_bad_config_fails_before_compiling(tmp_path: Path, name, overrides, message):
    c = config(name, None, **overrides)
    with _WATCH as watch, pytest.raises((ValueError, FileNotFoundError), match=message):
        train.train_and_evaluate(c, tmp_path)
    assert not watch.events, watch.events
    assert not (tmp_path / "checkpoints").exists()


def test_batch_size_not_divisible_by_devices(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    with pytest.raises(
        ValueError, match=r"config\.batch_size=6: must be divisible by the number of devices \(4\)"
    ):
        train.Trainer(config("synthetic_classification", batch_size=6), tmp_path)
    with pytest.raises(ValueError, match=r"config\.eval_batch_size=10: must be divisible"):
        train.Trainer(config("synthetic_classification", batch_size=8, eval_batch_size=10), tmp_path)


@pytest.mark.parametrize(
    "flag,devices,message",
    [
        (
            "--config.batch_sizee=8",
            1,
            r"config error in --config\.batch_sizee: unknown key 'batch_sizee'\n"
            r"Did you mean \"batch_size\"",
        ),
        ("--config.optimizer.nmae=sgd", 1, r"unknown key 'nmae'"),
        ("--config.batch_size=abc", 1, r"flag --config\.batch_size=abc: invalid literal for int"),
        ("--config.freeze=3", 1, r"config\.freeze=\(3,\): must be a sequence of parameter-path prefixes"),
        (
            "--config.batch_size=3",
            2,
            r"config\.batch_size=3: must be divisible by the number of devices \(2\)",
        ),
    ],
    ids=["unknown_key", "unknown_nested_key", "wrong_type", "wrong_type_tuple", "indivisible_batch"],
)
def test_cli_config_errors_name_the_key(tmp_path: Path, flag, devices, message):
    proc = run_main(tmp_path, flag, XLA_FLAGS=xla_flags(devices))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------
# 7. Weights safety: nothing in jaxcv unpickles
# ----------------------------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_calls(source: str) -> list[str]:
    """Imports of pickle-like modules, `torch.load`, and `allow_pickle=True` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            name = (
                f"{getattr(f.value, 'id', '?')}.{f.attr}"
                if isinstance(f, ast.Attribute)
                else getattr(f, "id", "")
            )
            if name == "torch.load" or name.endswith("pickle.load") or name.endswith("pickle.loads"):
                found.append(name)
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append(f"{name}(allow_pickle=...)")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "load"
            and getattr(node.value, "id", "") == "torch"
        ):
            found.append("torch.load")
    return sorted(set(found))


def test_unsafe_call_finder_finds_them():
    bad = (
        "import pickle\nfrom dill import loads\nimport numpy as np, torch\n"
        "np.load(p, allow_pickle=True)\nx = torch.load(f)\nload = torch.load\n"
    )
    assert unsafe_calls(bad) == [
        "from dill import",
        "import pickle",
        "np.load(allow_pickle=...)",
        "torch.load",
    ]
    assert unsafe_calls("import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)\n") == []


def test_no_module_in_jaxcv_unpickles():
    offenders = {}
    for path in sorted((ROOT / "jaxcv").rglob("*.py")):
        found = unsafe_calls(path.read_text())
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, offenders


# ----------------------------------------------------------------------------------------------------
# 3b. Detection inputs: images without boxes, degenerate boxes (shapes source + detection transform)
# ----------------------------------------------------------------------------------------------------


class Subset:
    """Items `indices` of `source` (a Source too)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, list(indices)
        self.num_classes, self.class_names = source.num_classes, source.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[self.indices[i]]


def test_images_without_boxes_train_as_all_background(tmp_path: Path):
    from jaxcv.data.loader import Loader

    c = config("shapes_retinanet", data__min_objects=0, data__max_objects=1)
    trainer = train.Trainer(c, tmp_path)
    source = trainer.task.source("train")
    empty = [i for i in range(len(source)) if len(source[i]["boxes"]) == 0]
    assert len(empty) >= 8, len(empty)
    loader = Loader(Subset(source, empty[:8]), trainer.task.make_transform(True), global_batch_size=8)
    batch = next(loader.train_batches(0))
    assert batch["box_mask"].shape == (8, c.data.max_boxes) and not batch["box_mask"].any()
    state, _ = trainer.initial_state(ckpt.Checkpoints(tmp_path))
    before = jax.device_get(state.params)
    state, metrics = trainer.p_train_step(
        state, train._to_global(batch, trainer.task.device_keys, trainer.data_sharding)
    )
    m = jax.device_get(metrics)
    assert m["finite"] == 1 and np.isfinite(m["loss"]) and m["loss"] > 0, m  # background is still learned
    assert m["box_loss"] == 0, m
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.array_equal(a, np.asarray(b)), before, jax.device_get(state.params)
    )
    assert any(jax.tree_util.tree_leaves(changed))


class ListSource:
    """An in-memory detection source (what a user's loader would yield)."""

    num_classes, class_names = 3, ["a", "b", "c"]

    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_degenerate_boxes_are_dropped_or_clipped(tmp_path: Path):
    from jaxcv.data.detection import make_detection_transform
    from jaxcv.data.loader import Loader

    nan = float("nan")
    boxes = np.array(
        [
            [10, 10, 30, 30],  # fine
            [30, 10, 20, 40],  # x2 < x1
            [15, 15, 15, 25],  # x2 == x1
            [70, 70, 90, 90],  # outside the 64 x 64 image
            [nan, 5, 20, 20],  # NaN
            [-10, -10, 20, 20],
        ],
        np.float32,
    )  # partly outside: clipped
    item = {
        "image": np.zeros((64, 64, 3), np.uint8),
        "boxes": boxes,
        "labels": np.array([0, 1, 2, 0, 1, 2]),
        "image_id": 7,
    }
    for train_mode in (False, True):
        transform = make_detection_transform(64, 8, train_mode, hflip=False)
        batch = next(Loader(ListSource([item]), transform, global_batch_size=1).train_batches(0))
        kept = batch["boxes"][0][batch["box_mask"][0]]
        assert np.isfinite(batch["boxes"]).all()
        np.testing.assert_allclose(kept, [[10, 10, 30, 30], [0, 0, 20, 20]])
        assert batch["labels"][0][batch["box_mask"][0]].tolist() == [0, 2]


# ----------------------------------------------------------------------------------------------------
# 3c. COCO-JSON user data: structure, annotation problems, corrupt images (source + transform + Loader)
# ----------------------------------------------------------------------------------------------------


def make_coco(root: Path) -> dict:
    """4 images (64 x 48) in root/images; one box on each of the first three, none on the fourth."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        _png(root / "images" / f"im{i}.png", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": 48, "width": 64})
        if i < 3:
            anns.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": (3, 7)[i % 2],
                    "bbox": [4, 4, 20, 16],
                    "area": 320,
                    "iscrowd": 0,
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


def coco_config(root: Path, data: dict, bad_input: str = "fail"):
    (root / "ann.json").write_text(json.dumps(data))  # NaN is written as the NaN literal Python reads back
    return config(
        "coco_json_retinanet",
        data__train_json=str(root / "ann.json"),
        data__train_images=str(root / "images"),
        data__val_json=str(root / "ann.json"),
        data__val_images=str(root / "images"),
        data__bad_input=bad_input,
        data__num_threads=2,
    )


BAD_ANNOTATIONS = {
    "nan_box": (
        lambda a: a.update(bbox=[float("nan"), 4, 10, 10]),
        r"bbox \[nan, 4, 10, 10\] is not 4 finite",
    ),
    "x2_le_x1": (lambda a: a.update(bbox=[30, 4, -5, 10]), r"bbox \[30, 4, -5, 10\] has no area"),
    "zero_width": (lambda a: a.update(bbox=[30, 4, 0, 10]), r"has no area"),
    "outside": (
        lambda a: a.update(bbox=[50, 30, 40, 40]),
        r"bbox \[50, 30, 40, 40\] lies outside its 64x48 image",
    ),
    "unknown_category": (lambda a: a.update(category_id=99), r"unknown category_id 99; categories: \[3, 7\]"),
    "unknown_image": (lambda a: a.update(image_id=42), r"unknown image_id 42"),
}


@pytest.mark.parametrize("problem", list(BAD_ANNOTATIONS))
def test_coco_json_bad_annotation_fails_naming_it_or_is_skipped_and_counted(tmp_path: Path, problem):
    mutate, message = BAD_ANNOTATIONS[problem]
    data = make_coco(tmp_path)
    mutate(data["annotations"][1])  # annotation 2, on image 2
    where = rf"{tmp_path}/ann\.json: annotation 2 \(image \d+\): .*"
    with _WATCH as watch, pytest.raises(DataError, match=where + message):
        train.train_and_evaluate(coco_config(tmp_path, data, "fail"), tmp_path / "w")
    assert not watch.events  # found when the loaders are made, before compiling

    trainer = train.Trainer(coco_config(tmp_path, data, "skip"), tmp_path / "w")
    loader = trainer.loader("train", train=False)
    assert len(loader.skipped) == 1 and re.search(message, loader.skipped[0]), loader.skipped
    boxes = {
        int(b["image_id"][i]): int(b["box_mask"][i].sum())
        for b in loader.eval_batches()
        for i in range(len(b["image_id"]))
        if b["valid"][i]
    }
    assert boxes == {1: 1, 2: 0, 3: 1, 4: 0}  # the bad box is gone; image 4 never had one


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.pop("categories"), r"missing top-level list 'categories'"),
        (lambda d: d["annotations"][1].pop("bbox"), r"annotation 2 is missing field\(s\) \['bbox'\]"),
        (lambda d: d["images"][0].pop("file_name"), r"image 1 is missing field\(s\) \['file_name'\]"),
        (lambda d: d.update(images=[], annotations=[]), r"the split has no images"),
    ],
    ids=["no_categories", "annotation_without_bbox", "image_without_file_name", "empty_split"],
)
def test_coco_json_structure_errors_whatever_the_policy(tmp_path: Path, mutate, message):
    data = make_coco(tmp_path)
    mutate(data)
    for policy in ("fail", "skip"):
        with _WATCH as watch, pytest.raises(DataError, match=rf"{tmp_path}/ann\.json: {message}"):
            train.train_and_evaluate(coco_config(tmp_path, data, policy), tmp_path / "w")
        assert not watch.events


def test_coco_json_corrupt_image_fails_naming_it_or_is_skipped(tmp_path: Path):
    data = make_coco(tmp_path)
    bad = tmp_path / "images" / "im1.png"
    bad.write_bytes(bad.read_bytes()[:200])
    loader = train.Trainer(coco_config(tmp_path, data, "fail"), tmp_path / "w").loader(
        "validation", train=False
    )
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        list(loader.eval_batches())
    loader = train.Trainer(coco_config(tmp_path, data, "skip"), tmp_path / "w").loader(
        "validation", train=False
    )
    ids = [int(i) for b in loader.eval_batches() for i, v in zip(b["image_id"], b["valid"], strict=True) if v]
    assert ids == [1, 3, 4] and len(loader.skipped) == 1 and str(bad) in loader.skipped[0]


def test_cli_coco_json_error_is_one_clear_line(tmp_path: Path):
    data = make_coco(tmp_path)
    data["annotations"][1].pop("bbox")
    (tmp_path / "ann.json").write_text(json.dumps(data))
    proc = run_main(
        tmp_path / "w",
        f"--config.data.train_json={tmp_path}/ann.json",
        f"--config.data.train_images={tmp_path}/images",
        f"--config.data.val_json={tmp_path}/ann.json",
        f"--config.data.val_images={tmp_path}/images",
        spec="configs/coco_json_retinanet.py:smoke",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        f"[jaxcv] data error: {tmp_path}/ann.json: annotation 2 is missing field(s) ['bbox']" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
