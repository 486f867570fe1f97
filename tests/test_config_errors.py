"""Errors before anything compiles: the NaN guard from the CLI, config validation naming the key, and
weights safety (nothing in jaxcv unpickles)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import xla_flags
from reliability_util import (
    _WATCH,
    ROOT,
    config,
    run_main,
    saved_steps,
)

from jaxcv import checkpoint as ckpt
from jaxcv import train

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
    start = trainer.initial_state(ckpt.Checkpoints(tmp_path))
    state, how = start.state, start.detail  # verified against its checksums
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
