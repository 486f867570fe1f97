"""Checkpoint integrity: corrupt, partial and foreign checkpoints are detected and skipped or refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util
from reliability_util import (
    INPROC,
    assert_identical,
    config,
    params_at,
    params_tree,
    saved_steps,
)

from jaxcv import checkpoint as ckpt
from jaxcv import train

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
    start = trainer.initial_state(ckpt.Checkpoints(workdir))
    out = capsys.readouterr().out
    assert start.origin == "scratch" and start.detail == "initialized from scratch"
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
    """`init_from` reads the best evaluated step first (one manager: the final step 6, which carries the
    metric); a corrupt one is skipped for the next older step."""
    workdir = tmp_path / "run"
    shutil.copytree(inproc_reference, workdir)
    assert ckpt.Checkpoints(workdir, keep=3, best_metric="accuracy").best_step() == 6
    bitflip(workdir / "checkpoints" / "6")
    params = traverse_util.flatten_dict(ckpt.load_variables(workdir)["params"], sep="/")
    assert f"checkpoint {workdir}/checkpoints/6 is corrupt" in capsys.readouterr().out
    assert_identical({k: np.asarray(v) for k, v in params.items()}, params_at(inproc_reference, 4))
