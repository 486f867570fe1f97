"""U-Net-ResNet34 training-step benchmark, with segmentation_models_pytorch as the peer when installed.

    python benchmarks/segmentation.py [--batch 4] [--size 256] [--classes 3] [--steps 5] [--optimizer adam]

Prints one JSON line per measurement. The JAX step is the one a trainer runs: jitted
`value_and_grad` of softmax cross-entropy through the model in training mode (BatchNorm batch
statistics), optax update, parameters/optimizer state/batch_stats donated. Times are wall-clock per
step after warm-up, synchronised with `block_until_ready`; compile time is reported separately.
The peer (`smp.Unet("resnet34", encoder_weights=None, classes=K)`, same optimizer, loss, shapes) runs
in the same process so both see the same machine load; without torch/smp a "skipped" line is printed
(reference measured earlier on the 2-core development CPU: smp 1.85 s/step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcv.losses import segmentation_cross_entropy
from jaxcv.models import create_model

SMP_REFERENCE_S_PER_STEP = 1.85  # smp Unet-R34, batch 4, 256x256, 3 classes, on the dev CPU


def _stats(times: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "steps": len(times),
    }


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _time_steps(step: Callable[[], Any], warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _make_tx(name: str, lr: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        return optax.sgd(lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; use adam or sgd")


def bench_jax(args: argparse.Namespace) -> dict[str, Any]:
    model = create_model("unet_resnet34", num_classes=args.classes)
    tx = _make_tx(args.optimizer, args.lr)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size, 3)), jnp.float32)
    masks = jnp.asarray(rng.integers(0, args.classes, (args.batch, args.size, args.size)), jnp.int32)

    t0 = time.perf_counter()
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(images[:1])
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    jax.block_until_ready(opt_state)
    init_s = time.perf_counter() - t0

    def train_step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            out, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
            return segmentation_cross_entropy(out["logits"], y), upd["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    t0 = time.perf_counter()
    step_fn = (
        jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(params, batch_stats, opt_state, images, masks).compile()
    )
    compile_s = time.perf_counter() - t0

    state = [params, batch_stats, opt_state]
    losses: list[float] = []

    def step() -> None:
        p, s, o, loss = step_fn(*state, images, masks)
        state[:] = [p, s, o]
        losses.append(float(jax.block_until_ready(loss)))

    times = _time_steps(step, args.warmup, args.steps)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state[0]))
    return {
        "name": "jaxcv_unet_resnet34_train_step",
        **_stats(times),
        "compile_s": round(compile_s, 2),
        "init_s": round(init_s, 2),
        "params": int(n_params),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def bench_smp(args: argparse.Namespace, ours_median_s: float) -> dict[str, Any] | None:
    try:
        import segmentation_models_pytorch as smp
        import torch
    except ImportError as e:  # the peer is optional; say so instead of failing
        _emit(
            {
                "name": "smp_unet_resnet34_train_step",
                "skipped": True,
                "reason": f"peer not importable: {e}",
                "reference_s_per_step_dev_cpu": SMP_REFERENCE_S_PER_STEP,
                "reference_over_jaxcv_median": round(SMP_REFERENCE_S_PER_STEP / ours_median_s, 3),
            }
        )
        return None
    torch.manual_seed(0)
    model = smp.Unet("resnet34", encoder_weights=None, classes=args.classes).train()
    opt = (
        torch.optim.Adam(model.parameters(), lr=args.lr)
        if args.optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    )
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(args.batch, 3, args.size, args.size)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, args.classes, (args.batch, args.size, args.size)).astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    times = _time_steps(step, args.warmup, args.steps)
    return {
        "name": "smp_unet_resnet34_train_step",
        **_stats(times),
        "params": int(sum(p.numel() for p in model.parameters())),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-peer", action="store_true", help="skip the segmentation_models_pytorch peer")
    args = ap.parse_args()
    if args.steps < 5:
        ap.error("--steps must be >= 5 (median/min/max over at least five steps)")

    common = {
        "batch": args.batch,
        "size": args.size,
        "classes": args.classes,
        "optimizer": args.optimizer,
    }
    ours = {**bench_jax(args), **common}
    _emit(ours)
    if args.no_peer:
        return
    peer = bench_smp(args, ours["median_s"])
    if peer is not None:
        _emit({**peer, **common})
        _emit(
            {
                "name": "ratio_smp_over_jaxcv",
                "median_ratio": round(peer["median_s"] / ours["median_s"], 3),
                "note": ">1 means jaxcv is faster",
            }
        )


if __name__ == "__main__":
    from jaxcv import runtime as _runtime

    _runtime.configure()  # the CPU settings jaxcv's entry points apply (import jaxcv alone changes nothing)
    main()
