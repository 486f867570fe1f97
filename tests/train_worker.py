"""Runs a few train steps of a config and prints losses and final params as JSON (for tests that need a
fresh process, e.g. with 8 forced CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=8).

    python tests/train_worker.py CONFIG_PATH[:ARG] STEPS OUT.npz [key=value ...]
"""

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxcv import checkpoint as ckpt  # noqa: E402
from jaxcv.train import TRACE_COUNTS, Trainer, _to_global  # noqa: E402


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    s = importlib.util.spec_from_file_location("cfg", path)
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m.get_config(arg or None)


def main() -> None:
    spec, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = load_config(spec)
    with config.unlocked():
        for kv in sys.argv[4:]:
            key, value = kv.split("=", 1)
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = type(node[leaf])(json.loads(value))
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        state, _ = trainer.initial_state(ckpt.Checkpoints(workdir))
        batches = trainer.loader("train", train=True).train_batches(0)
        losses = []
        for _ in range(steps):
            batch = _to_global(next(batches), trainer.task.device_keys, trainer.data_sharding)
            state, metrics = trainer.p_train_step(state, batch)
            losses.append(float(metrics["loss"]))
        flat = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
        np.savez(out, **{k: np.asarray(v) for k, v in flat.items()})
        print(json.dumps({"devices": jax.device_count(), "losses": losses,
                          "compiles": TRACE_COUNTS["train_step"]}))


if __name__ == "__main__":
    main()
