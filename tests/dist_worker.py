"""One process of a multi-process (multi-host style) CPU run, for tests/test_multiprocess.py.

Trains STEPS steps of CONFIG through the real Trainer: its Loader reads only this process's slice of
every global batch (process_index/process_count come from jax), `_to_global` assembles the global
batch across processes and the jitted step runs on a mesh of all processes' devices. Prints one JSON
line (devices, processes, losses, this process's item indices) and saves the final params to OUT.npz.

    JAX_PLATFORMS=cpu python tests/dist_worker.py CONFIG[:ARG] STEPS OUT.npz NUM_PROCESSES PROCESS_ID PORT \
        [key=value ...]

NUM_PROCESSES=1 runs without jax.distributed (the single-process reference).
"""

import json
import sys
import tempfile
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(spec: str, steps: int, out: str | Path, overrides: list[str]) -> dict:
    """Trains `steps` steps of `spec` in this process (distributed or not), saves this process's copy of
    the params to `out` (.npz) and returns a summary."""
    import numpy as np
    from flax import traverse_util

    from jaxcv import checkpoint as ckpt
    from jaxcv.config import load_config_file, parse_override
    from jaxcv.train import Trainer, _to_global

    config = load_config_file(ROOT / spec, dict(parse_override(kv) for kv in overrides))
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, workdir)
        start = trainer.initial_state(ckpt.Checkpoints(workdir))
        state, how = start.state, start.detail
        loader = trainer.loader("train", train=True)
        batches = loader.train_batches(0)
        losses, indices = [], []
        for step in range(int(steps)):
            indices.append(loader.train_indices(step)[0].tolist())
            batch = _to_global(next(batches), trainer.task.device_keys, trainer.data_sharding)
            state, metrics = trainer.jit_train_step(state, batch)
            losses.append(float(metrics["loss"]))
        params = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), state.params)
        np.savez(out, **traverse_util.flatten_dict(params, sep="/"))
        return {
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "process_index": jax.process_index(),
            "local_batch": loader.local_batch_size,
            "losses": losses,
            "indices": indices,
            "how": how,
        }


def main() -> None:
    from jaxcv import runtime

    runtime.configure()  # as the entry points (and the in-process tests) compute
    spec, steps, out, num_processes, process_id, port = sys.argv[1:7]
    num_processes, process_id = int(num_processes), int(process_id)
    if num_processes > 1:
        # CPU collectives between processes use gloo (jax 0.10's default on CPU; explicit for clarity).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
        )
    print(json.dumps(run(spec, int(steps), out, sys.argv[7:])), flush=True)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
