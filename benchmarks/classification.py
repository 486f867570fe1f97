"""ResNet train-step benchmark (the foundation issue's ResNet-18, batch 8, 224x224, SGD).

    python benchmarks/classification.py [--arch resnet18] [--batch 8] [--size 224] [--steps 5] [--dtype float32]

Prints one JSON line: median/min/max seconds per step after warm-up and the compile time. The step
is the trainer's: jitted value_and_grad of softmax cross-entropy with BatchNorm in training mode,
SGD with momentum, state donated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcv.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    model = create_model(args.arch, num_classes=1000, dtype=jnp.dtype(args.dtype))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3)), jnp.float32)
    y = jnp.arange(args.batch) % 1000
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0, impl="rbg"))
    tx = optax.sgd(0.1, momentum=0.9)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    @jax.jit
    def step(state, x, y):
        params, stats, opt = state

        def loss_fn(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), stats, opt), loss

    step = jax.jit(step.__wrapped__, donate_argnums=0)
    t0 = time.perf_counter()
    state, loss = step(state, x, y)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, loss = step(state, x, y)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t)
    print(json.dumps({"name": f"{args.arch}_train_step", "batch": args.batch, "size": args.size, "dtype": args.dtype,
                      "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                      "max_s": round(max(times), 3), "compile_s": round(compile_s, 1), "steps": len(times),
                      "device": str(jax.devices()[0].platform)}))


if __name__ == "__main__":
    from jaxcv import runtime as _runtime

    _runtime.configure()  # the CPU settings jaxcv's entry points apply (import jaxcv alone changes nothing)
    main()
