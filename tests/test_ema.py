"""Exponential moving average of the weights (`config.ema_decay`): the update rule, and that it is trained,
checkpointed, restored and used for evaluation."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv import checkpoint as ckpt
from jaxcv.config import load_config_file, validate_config
from jaxcv.train import Trainer, ema_update, train_and_evaluate


def test_ema_update_follows_ultralytics_ramp():
    ema = {"params": {"w": jnp.ones(3)}, "batch_stats": {"m": jnp.zeros(2)}}
    new = ema_update(ema, {"w": jnp.zeros(3)}, {"m": jnp.ones(2)}, jnp.int32(100), 0.9999, 2000.0)
    d = 0.9999 * (1 - np.exp(-100 / 2000))
    np.testing.assert_allclose(new["params"]["w"], d, rtol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["m"], 1 - d, rtol=1e-5)
    const = ema_update(ema, {"w": jnp.zeros(3)}, {"m": jnp.ones(2)}, jnp.int32(1), 0.5, 0.0)
    np.testing.assert_allclose(const["params"]["w"], 0.5)


def test_ema_is_checkpointed_restored_and_evaluated(tmp_path: Path):
    config = load_config_file("configs/synthetic_classification.py:smoke", {"ema_decay": 0.5, "ema_tau": 0.0})
    train_and_evaluate(config, tmp_path)
    trainer = Trainer(config, tmp_path)
    start = trainer.initial_state(ckpt.Checkpoints(tmp_path))
    assert start.origin == "checkpoint"
    state = start.state
    assert jax.tree.structure(state.ema["params"]) == jax.tree.structure(state.params)
    differs = [bool(np.any(np.asarray(a) != np.asarray(b)))
               for a, b in zip(jax.tree.leaves(state.ema["params"]), jax.tree.leaves(state.params), strict=True)]
    assert any(differs)  # the average lags the trained weights
    assert state.eval_variables() is not None and state.eval_variables()["params"] is state.ema["params"]
    with pytest.raises(ValueError, match=r"config.ema_decay=1.5"):
        validate_config(load_config_file("configs/synthetic_classification.py:smoke", {"ema_decay": 1.5}))
