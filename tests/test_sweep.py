"""Sweep runner and plots: names/overrides, seed grouping (mean ± sample std), --print_commands, a real
two-run sweep end to end, and resuming a half-finished sweep (only the missing part runs)."""

import csv
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcv import plot, sweep

ROOT = Path(__file__).resolve().parents[1]

SWEEP_FILE = '''
from jaxcv.sweep import product

config = "configs/synthetic_classification.py:smoke"
fixed = {"checkpoint_every": 3}


def get_sweep():
    return product(optimizer__learning_rate=[0.002, 0.0005])
'''


def test_product_zipped_names_and_cli_values():
    s = sweep.product({"loss.gamma": [0.0, 2.0]}, loss__alpha=[0.25, 0.5])
    assert s == [{"loss.gamma": 0.0, "loss.alpha": 0.25}, {"loss.gamma": 0.0, "loss.alpha": 0.5},
                 {"loss.gamma": 2.0, "loss.alpha": 0.25}, {"loss.gamma": 2.0, "loss.alpha": 0.5}]
    z = sweep.zipped({"loss.gamma": [0, 2]}, loss__alpha=[0.75, 0.25])
    assert z == [{"loss.gamma": 0, "loss.alpha": 0.75}, {"loss.gamma": 2, "loss.alpha": 0.25}]
    with pytest.raises(ValueError, match="differ in length"):
        sweep.zipped(a=[1, 2], b=[1])
    with pytest.raises(ValueError, match="non-empty list"):
        sweep.product(a="abc")
    assert sweep.run_name({"loss.gamma": 2.0, "loss.alpha": 0.25, "seed": 1}) == "loss.gamma=2,loss.alpha=0.25,seed=1"
    assert sweep.run_name({"_name": "scales=3", "anchors.scales": (1.0, 1.26), "seed": 0}) == "scales=3,seed=0"
    assert sweep.run_name({"model.name": "unet/resnet18"}) == "model.name=unet-resnet18"
    assert sweep.cli_value((1.0, 2 ** (1 / 3))) == f"(1.0, {2 ** (1 / 3)!r})"
    assert sweep.cli_value((0.5,)) == "(0.5,)"
    assert sweep.cli_value(1e-3) == "0.001" and sweep.cli_value("giou") == "giou"
    runs = sweep.expand([{"a": 1}, {"a": 2}], seeds=[0, 1], workdir="/w")
    assert [r.name for r in runs] == ["a=1,seed=0", "a=1,seed=1", "a=2,seed=0", "a=2,seed=1"]
    assert [r.setting for r in runs] == ["a=1", "a=1", "a=2", "a=2"]
    assert runs[3].workdir == Path("/w/a=2,seed=1") and runs[3].overrides == {"a": 2, "seed": 1}
    with pytest.raises(ValueError, match="same name"):
        sweep.expand([{"a": 1}, {"a": 1}], None, "/w")


def _fake_sweep(tmp_path: Path, values: dict[str, list[float | None]]) -> Path:
    """A sweep dir whose runs' eval/metrics.json hold the given AP per seed (None: run not finished)."""
    settings = [{"loss.gamma": float(g)} for g in values]
    runs = sweep.expand(settings, seeds=[0, 1, 2], workdir=tmp_path)
    s = sweep.Sweep(config="configs/x.py", fixed={"num_train_steps": 5}, runs=runs)
    sweep.write_manifest(s, tmp_path)
    for run in runs:
        ap = values[str(int(run.overrides["loss.gamma"]))][run.seed]
        if ap is not None:
            (run.workdir / "eval").mkdir(parents=True)
            (run.workdir / "eval" / "metrics.json").write_text(json.dumps({"AP": ap, "AP50": 2 * ap, "bad": None}))
    return tmp_path


def test_results_group_seeds_mean_and_sample_std(tmp_path: Path):
    d = _fake_sweep(tmp_path, {"0": [0.1, 0.2, 0.3], "2": [0.5, 0.7, None]})
    _, md = sweep.write_results(d)
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert [r["setting"] for r in rows] == ["loss.gamma=0", "loss.gamma=2"]
    assert float(rows[0]["AP"]) == pytest.approx(0.2) and float(rows[0]["AP_std"]) == pytest.approx(0.1)
    assert float(rows[0]["AP50_std"]) == pytest.approx(0.2)
    assert float(rows[1]["AP"]) == pytest.approx(0.6)  # the unfinished seed is left out
    assert float(rows[1]["AP_std"]) == pytest.approx(math.sqrt(0.02))  # ddof=1 over the 2 finished
    assert rows[0]["num_seeds"] == "3" and rows[1]["num_seeds"] == "2"
    text = md.read_text()
    assert "| loss.gamma=0 | 0 | 3/3 | 0.200 ± 0.100 | 0.400 ± 0.200 |" in text, text
    assert "| loss.gamma=2 | 2 | 2/3 | 0.600 ± 0.141 | 1.200 ± 0.283 |" in text, text
    assert "Not finished (1): `loss.gamma=2,seed=2`" in text
    assert "`num_train_steps=5`" in text
    per_run = list(csv.DictReader(open(d / "runs.csv")))
    assert len(per_run) == 6 and per_run[5]["status"] == "missing" and per_run[5]["AP"] == ""
    assert rows[0]["bad"] == ""  # a null (non-finite) metric has no mean
    assert sweep.format_mean_std(0.25, float("nan")) == "0.250" and sweep.format_mean_std(float("nan"), 0) == "—"
    png = plot.plot_sweep(d, "loss.gamma", "AP", tmp_path / "ap.png")
    assert png.stat().st_size > 5000
    pts = plot.sweep_points(d, "loss.gamma", "AP")
    assert [(p["x"], round(p["y"], 6), p["n"]) for p in pts] == [(0.0, 0.2, 3), (2.0, 0.6, 2)]
    assert [p["setting"] for p in plot.sweep_points(d, "loss.gamma", "AP", where={"loss.gamma": "2"})] == [
        "loss.gamma=2"]
    with pytest.raises(ValueError, match="not a swept key"):
        plot.plot_sweep(d, "loss.alpha", "AP")


def test_print_commands(tmp_path: Path, capsys):
    sweep_file = tmp_path / "lr.py"
    sweep_file.write_text(SWEEP_FILE.replace("[0.002, 0.0005]", "[0.002, 0.0005, 0.1]") + "seeds = [0, 1]\n")
    out = tmp_path / "sweep"
    done = out / "optimizer.learning_rate=0.1,seed=1" / "eval"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    assert sweep.main([f"--sweep={sweep_file}", f"--workdir={out}", "--print_commands", "--",
                       "--config.log_every=3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 5, lines  # 3 settings x 2 seeds, one finished
    assert "# finished: optimizer.learning_rate=0.1,seed=1" in captured.err
    argv = shlex.split(lines[1])
    assert argv[1:4] == ["-m", "jaxcv.main", "--config=configs/synthetic_classification.py:smoke"]
    assert argv[4] == f"--workdir={out}/optimizer.learning_rate=0.002,seed=1"
    assert argv[5:] == ["--config.checkpoint_every=3", "--config.optimizer.learning_rate=0.002",
                        "--config.seed=1", "--config.log_every=3"]
    assert not (out / "optimizer.learning_rate=0.002,seed=1").exists()  # nothing was run
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 6


def _sweep(sweep_file: Path, out: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "jaxcv.sweep", f"--sweep={sweep_file}", f"--workdir={out}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_sweep_runs_end_to_end_then_resumes_only_missing(tmp_path: Path):
    sweep_file = tmp_path / "lr.py"
    sweep_file.write_text(SWEEP_FILE)
    out = tmp_path / "sweep"
    log = _sweep(sweep_file, out, "--parallel=2")
    names = ["optimizer.learning_rate=0.002", "optimizer.learning_rate=0.0005"]
    for n in names:
        assert f"[sweep] starting {n}" in log and f"[sweep] finished {n}" in log, log
        assert (out / n / "eval" / "metrics.json").exists()
        assert json.loads((out / n / "config.json").read_text())["checkpoint_every"] == 3
    rows = {r["setting"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert list(rows) == names
    for n in names:
        acc = json.loads((out / n / "eval" / "metrics.json").read_text())["accuracy"]
        assert float(rows[n]["accuracy"]) == pytest.approx(acc, abs=1e-6) and 0 <= acc <= 1
        assert rows[n]["num_seeds"] == "1"
    md = (out / "results.md").read_text()
    assert all(f"| {n} | 0.002 |" in md or f"| {n} | 0.0005 |" in md for n in names), md

    # half-finished sweep: run 0 done, run 1 trained but not evaluated (killed before its final eval)
    done = out / names[0] / "eval" / "metrics.json"
    mtime = done.stat().st_mtime_ns
    (out / names[1] / "eval" / "metrics.json").unlink()
    log = _sweep(sweep_file, out)
    assert f"[sweep] skip {names[0]} (finished" in log, log
    assert f"[sweep] resuming {names[1]}" in log and f"[sweep] finished {names[1]}" in log, log
    assert "1 finished, 1 to run" in log
    assert done.stat().st_mtime_ns == mtime  # not rerun
    run_log = (out / names[1] / "sweep.log").read_text()
    assert run_log.count("$ ") == 2 and "resumed from" in run_log, run_log
    assert (out / names[1] / "eval" / "metrics.json").exists()
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2

    png = plot.plot_sweep(out, "optimizer.learning_rate", "accuracy")
    assert png == out / "accuracy_vs_optimizer.learning_rate.png" and png.stat().st_size > 5000
    curves = plot.plot_curves([out / n for n in names], tmp_path / "curves.png")
    assert curves.stat().st_size > 5000
    proc = subprocess.run([sys.executable, "-m", "jaxcv.plot", f"--workdirs={out / names[0]}", "--curves",
                           "--y=accuracy", f"--out={tmp_path / 'c.png'}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / "c.png").exists(), proc.stderr


# --------------------------------------------------------------------------------------------------
# REPRODUCING.md: evaluating converted torchvision COCO weights (--mode=eval with init_from)
# --------------------------------------------------------------------------------------------------


def _config(name: str, arg: str | None = "smoke"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_label_map_category_id_class_space():
    from jaxcv.tasks import create_task

    c = _config("shapes_retinanet")
    task = create_task(c)
    ids, names = task.class_space("validation")
    assert task.num_classes == 3 and list(ids) == [1, 2, 3] and names == ["circle", "square", "triangle"]
    with c.unlocked():
        c.data.label_map = "category_id"  # shapes' category ids are 1..3: 4 outputs, class 0 never positive
    task = create_task(c)
    task.validate()
    ids, names = task.class_space("validation")
    assert task.num_classes == 4 and list(ids) == [0, 1, 2, 3] and names == ["N/A", "circle", "square", "triangle"]
    assert task.model_kwargs()["num_classes"] == 4
    with c.unlocked():
        c.data.label_map = "coco91"
    with pytest.raises(ValueError, match="label_map"):
        create_task(c).validate()


def test_eval_needs_every_variable_from_init_from():
    from types import SimpleNamespace

    import numpy as np

    from jaxcv import checkpoint as ckpt
    from jaxcv.state import check_complete as _check_complete

    c = _config("coco_retinanet_r50_1x")
    state = SimpleNamespace(params={"backbone": {"w": np.zeros(2)}, "head": {"w": np.zeros((3, 91))}},
                            batch_stats={"backbone": {"mean": np.zeros(2)}})
    source = {"backbone": {"w": np.ones(2)}, "head": {"w": np.ones((3, 80))}}
    with c.unlocked():
        c.init_from, c.init_prefix = "/weights", ""
    _, report = ckpt.merge_pretrained(state.params, source)
    _, stats = ckpt.merge_pretrained(state.batch_stats, {"backbone": {"mean": np.ones(2)}})
    with pytest.raises(ValueError, match=r"sets 2 of the model's 3 variables.*head/w: \(3, 80\) vs \(3, 91\)"
                                         r".*label_map=category_id"):
        _check_complete(c, state, report, stats)
    _, report = ckpt.merge_pretrained(state.params, {**source, "head": {"w": np.ones((3, 91))}})
    _check_complete(c, state, report, stats)  # all loaded: fine
    with c.unlocked():
        c.init_prefix = "backbone"
    _, report = ckpt.merge_pretrained(state.params, {"w": np.ones(2)}, "backbone")
    _, stats = ckpt.merge_pretrained(state.batch_stats, {"mean": np.ones(2)}, "backbone")
    with pytest.raises(ValueError, match="init_prefix='backbone' loads only that part"):
        _check_complete(c, state, report, stats)


@pytest.mark.slow
def test_eval_converted_torchvision_retinanet_via_init_from(tmp_path: Path):
    """The REPRODUCING.md path on the COCO smoke config (R50-FPN, 91 classes, random fixture weights,
    COCO mocked by tfds): converted weights load completely and the evaluation writes its results."""
    from conftest import fixture_path, mock_tfds

    from jaxcv import modes
    from jaxcv.convert import convert

    weights = convert("retinanet_resnet50_fpn", fixture_path("retinanet_r50_fpn.safetensors"), tmp_path / "w")
    c = _config("coco_retinanet_r50_1x")
    with c.unlocked():
        c.model.backbone, c.model.fpn_channels = "resnet50", 256
        c.init_from, c.init_prefix, c.data.label_map = str(weights), "", "category_id"
    with mock_tfds(2):
        metrics = modes.evaluate_only(c, tmp_path / "run")
    assert set(metrics) >= {"AP", "AP50"} and all(math.isfinite(v) for v in metrics.values())
    dets = json.loads((tmp_path / "run" / "eval" / "detections.json").read_text())
    assert dets and all(0 <= d["category_id"] <= 90 for d in dets)  # model class = COCO category id
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["AP"] == metrics["AP"]
