"""Convolution kernels alone: jaxcv's convolution (the `conv_impl` rule) against torch's conv2d, per layer.

    python benchmarks/conv_layers.py [--only=resnet50,retinanet,unet] [--repeats 5] [--dtype float32|bfloat16]

Each line times forward + both gradients (loss = sum of squared outputs) of one layer shape of the suite's
models, jaxcv then torch in alternation in the same process (median of `--repeats` after 2 warm-ups), with the
form the rule chose (`xla`, `im2col`, `matmul` for 1x1) and GFLOP/s (3 x the forward's 2*rows*Cin*Cout*K*K).
A `model` line per model weights each shape by how often the model's train step runs it. Why: it separates
what XLA:CPU's kernels cost from the rest of a step (benchmarks/README.md, "Second round"); the whole-step
ratios of `run.py` cannot be below what these layers allow. Needs torch (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from detection import _emit as emit  # benchmarks/detection.py, beside this script
from run import alternate  # benchmarks/run.py: alternating timed runs after warm-up

from jaxcv.ops import conv as conv_ops

# (model, batch, size, cin, cout, kernel, stride, count in the model's step)
LAYERS = [
    ("resnet50", 8, 224, 3, 64, 7, 2, 1), ("resnet50", 8, 56, 64, 64, 3, 1, 3),
    ("resnet50", 8, 56, 128, 128, 3, 2, 1), ("resnet50", 8, 28, 128, 128, 3, 1, 3),
    ("resnet50", 8, 14, 256, 256, 3, 1, 5), ("resnet50", 8, 7, 512, 512, 3, 1, 2),
    ("resnet50", 8, 56, 64, 256, 1, 1, 4), ("resnet50", 8, 56, 256, 64, 1, 1, 2),
    ("resnet50", 8, 28, 512, 128, 1, 1, 3), ("resnet50", 8, 14, 1024, 256, 1, 1, 5),
    ("resnet50", 8, 7, 2048, 512, 1, 1, 2),
    ("retinanet", 2, 64, 256, 256, 3, 1, 8), ("retinanet", 2, 32, 256, 256, 3, 1, 8),
    ("retinanet", 2, 64, 256, 819, 3, 1, 1),
    ("unet", 4, 256, 32, 16, 3, 1, 1), ("unet", 4, 128, 128, 32, 3, 1, 1), ("unet", 4, 64, 192, 64, 3, 1, 1),
    ("unet", 4, 256, 16, 3, 3, 1, 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="resnet50,retinanet,unet")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    import torch

    models = args.only.split(",")
    dtype = jnp.dtype(args.dtype)
    totals: dict[str, list[float]] = {m: [0.0, 0.0] for m in models}
    for model, b, h, cin, cout, k, s, count in LAYERS:
        if model not in models:
            continue
        rng = np.random.default_rng(0)
        xn = rng.normal(size=(b, h, h, cin)).astype(np.float32)
        wn = (rng.normal(size=(k, k, cin, cout)) * 0.05).astype(np.float32)
        p = k // 2
        pads = ((p, p), (p, p))
        x, w = jnp.asarray(xn, dtype), jnp.asarray(wn, dtype)

        def loss(x: jax.Array, w: jax.Array, s: int = s, pads: Any = pads) -> jax.Array:
            y = conv_ops.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jnp.square(y.astype(jnp.float32)))

        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).compile()
        tx = torch.from_numpy(xn.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        tw = torch.from_numpy(wn.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
        bf16 = args.dtype == "bfloat16"

        def peer(tx: Any = tx, tw: Any = tw, s: int = s, p: int = p, bf16: bool = bf16) -> None:
            tx.grad = tw.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = torch.nn.functional.conv2d(tx, tw, stride=s, padding=p)
            y.float().square().sum().backward()

        t_ours, t_peer = alternate(lambda c=compiled, x=x, w=w: jax.block_until_ready(c(x, w)), peer, 2, args.repeats)
        med = {"jaxcv": statistics.median(t_ours), "torch": statistics.median(t_peer)}
        rows = b * ((h + 2 * p - k) // s + 1) ** 2
        gflop = 3 * 2 * rows * cin * cout * k * k / 1e9
        form = "matmul" if k == 1 else "im2col" if conv_ops._use_im2col(
            x.shape, w.shape, (s, s), pads, dtype == jnp.bfloat16) else "xla"
        totals[model][0] += count * med["jaxcv"]
        totals[model][1] += count * med["torch"]
        emit({"name": f"conv_{model}_b{b}_{h}x{h}_{cin}to{cout}_k{k}s{s}", "count": count, "form": form,
              "jaxcv_ms": round(med["jaxcv"] * 1e3, 2), "torch_ms": round(med["torch"] * 1e3, 2),
              "jaxcv_gflops": round(gflop / med["jaxcv"], 1), "torch_gflops": round(gflop / med["torch"], 1),
              "ratio": round(med["jaxcv"] / med["torch"], 3), "dtype": args.dtype})
    for model, (ours, theirs) in totals.items():
        emit({"name": f"model_{model}", "jaxcv_ms": round(ours * 1e3, 1), "torch_ms": round(theirs * 1e3, 1),
              "ratio": round(ours / theirs, 3), "dtype": args.dtype,
              "note": "layers weighted by their count in the model's train step"})


if __name__ == "__main__":
    from jaxcv import runtime as _runtime

    _runtime.configure()  # the CPU settings jaxcv's entry points apply (import jaxcv alone changes nothing)
    main()
