"""Observability: `--profile_steps`' jax.profiler trace, the logged learning rate, the evaluation's progress
line and the optional wandb writer (a fake `wandb` module: wandb is no test dependency)."""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import TEST_CACHE, xla_flags

from jaxcv import train
from jaxcv.config import load_config_file
from jaxcv.logs import WANDB_ID_FILE, EvalProgress, MetricWriter, read_metrics, validate_logging
from jaxcv.optim import create_schedule

ROOT = Path(__file__).resolve().parents[1]


class FakeWandb(types.ModuleType):
    """Records `wandb.init(...)`, `run.log(...)` and `run.finish()` calls."""

    def __init__(self):
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logs: list[tuple[dict, int]] = []
        self.finished = 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step=None):
                fake.logs.append((dict(data), step))

            def finish(self):
                fake.finished += 1

        return Run()


def smoke_config(**overrides):
    """configs/synthetic_classification.py:smoke, 3 steps logged each step, 4 evaluation batches."""
    values = {"num_train_steps": 3, "log_every": 1, "checkpoint_every": 3, "eval_batch_size": 16, **overrides}
    return load_config_file(f"{ROOT}/configs/synthetic_classification.py:smoke", values)


def test_profile_learning_rate_eval_progress_and_wandb(tmp_path: Path, capsys, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    c = smoke_config(**{"logging.wandb_project": "jaxcv-test"})
    train.train_and_evaluate(c, tmp_path, profile_steps="1:3")
    out = capsys.readouterr().out

    # The trace: TensorBoard's profile-plugin layout, and the Perfetto file beside it.
    runs = list((tmp_path / "profile" / "plugins" / "profile").iterdir())
    assert len(runs) == 1, runs
    assert list(runs[0].glob("*.xplane.pb")), list(runs[0].iterdir())
    assert (runs[0] / "perfetto_trace.json.gz").stat().st_size > 0
    assert "profile of steps 1:3 written to" in out

    # The learning rate of each logged step: the schedule at the update count that step used.
    schedule = create_schedule(c.schedule, c.optimizer.learning_rate, c.num_train_steps)
    train_records = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    for r in train_records:
        assert r["learning_rate"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
    assert len({r["learning_rate"] for r in train_records}) == 3  # warmup: it changes each step

    # Evaluation's progress line (stdout is no terminal here: full lines).
    assert "[jaxcv] eval validation 4/4 batches" in out, out
    assert "batch/s, ETA 0:00:00" in out

    # wandb got the flattened config, a stable id, every scalar and a finish.
    (init,) = fake.inits
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert init["project"] == "jaxcv-test" and init["id"] == run_id and init["resume"] == "allow"
    assert init["dir"] == str(tmp_path)
    assert init["config"]["logging.wandb_project"] == "jaxcv-test" and init["config"]["num_train_steps"] == 3
    logged = {(step, k) for data, step in fake.logs for k in data}
    assert {(1, "train/loss"), (3, "train/learning_rate"), (3, "eval/accuracy")} <= logged, logged
    assert fake.finished == 1

    # A resumed run (same workdir) continues the same wandb run.
    MetricWriter(tmp_path, tensorboard=False, wandb_project="jaxcv-test").close()
    assert fake.inits[1]["id"] == run_id and fake.inits[1]["config"]["num_train_steps"] == 3


@pytest.mark.parametrize("value", ["5:3", "3:3", "-1:2", "abc", "3", "1:2:3", "2:99"])
def test_bad_profile_steps_fail_naming_the_flag_before_compiling(tmp_path: Path, value: str):
    before = dict(train.TRACE_COUNTS)
    with pytest.raises(ValueError, match="--profile_steps"):
        train.train_and_evaluate(smoke_config(), tmp_path / "w", profile_steps=value)
    assert dict(train.TRACE_COUNTS) == before
    assert not (tmp_path / "w").exists()


def test_profile_flag_checked_when_flags_are_parsed(tmp_path: Path):
    cmd = [sys.executable, "-m", "jaxcv.main", "--config=synthetic_classification:smoke", f"--workdir={tmp_path}",
           "--profile_steps=4:2"]
    env = {"XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu", "JAXCV_COMPILATION_CACHE": TEST_CACHE}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 1
    assert "--profile_steps=4:2: END must be greater than START" in proc.stderr, proc.stderr


def test_wandb_missing_or_bad_fails_before_compiling(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    before = dict(train.TRACE_COUNTS)
    with pytest.raises(ValueError, match=r"wandb_project=.p. needs the wandb package: pip install wandb"):
        train.train_and_evaluate(smoke_config(**{"logging.wandb_project": "p"}), tmp_path / "a")
    assert dict(train.TRACE_COUNTS) == before and not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"config.logging.wandb_project=3: must be a string"):
        validate_logging({"logging": {"wandb_project": 3}})  # a locked ConfigDict refuses an int already
    # Off by default: no wandb import at all.
    MetricWriter(tmp_path / "c", tensorboard=False).close()
    assert not (tmp_path / "c" / WANDB_ID_FILE).exists()


class _Terminal:
    """A stdout that says it is a terminal, keeping what is written."""

    def __init__(self):
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_eval_progress_rewrites_one_line_on_a_terminal(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    progress = EvalProgress(3, "eval validation")
    for i in (1, 2, 3):
        progress.update(i)
    EvalProgress(3, enabled=False).update(3)  # processes other than 0: nothing
    assert term.text.count("\r") == 3 and term.text.endswith("\n") and term.text.count("\n") == 1
    assert term.text.startswith("\r[jaxcv] eval validation 1/3 batches, ? batch/s, ETA ?")
    assert "3/3 batches" in term.text.rsplit("\r", 1)[1]
