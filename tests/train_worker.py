"""Runs a few train steps of a config and prints losses and final params as JSON (for tests that need a
fresh process, e.g. with 8 forced CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=8).

    python tests/train_worker.py CONFIG_PATH[:ARG] STEPS OUT.npz [key=value ...]
"""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxcv import checkpoint as ckpt  # noqa: E402
from jaxcv import runtime  # noqa: E402
from jaxcv.config import load_config_file, parse_override  # noqa: E402
from jaxcv.train import TRACE_COUNTS, Trainer, _to_global  # noqa: E402


def main() -> None:
    runtime.configure()  # as the entry points (and the in-process tests) compute
    spec, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    config = load_config_file(spec, dict(parse_override(kv) for kv in sys.argv[4:]))
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        state = trainer.initial_state(ckpt.Checkpoints(workdir)).state
        batches = trainer.loader("train", train=True).train_batches(0)
        losses = []
        for _ in range(steps):
            batch = _to_global(next(batches), trainer.task.device_keys, trainer.data_sharding)
            state, metrics = trainer.jit_train_step(state, batch)
            losses.append(float(metrics["loss"]))
        flat = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
        np.savez(out, **{k: np.asarray(v) for k, v in flat.items()})
        print(json.dumps({"devices": jax.device_count(), "losses": losses,
                          "compiles": TRACE_COUNTS["train_step"]}))


if __name__ == "__main__":
    main()
