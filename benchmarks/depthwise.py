"""Depthwise convolutions alone: the forms jaxcv can write them in, against torch's grouped conv2d, per layer.

    python benchmarks/depthwise.py [--repeats 5] [--batch 32] [--dtype float32|bfloat16]

Each line times forward + both gradients (loss = sum of squared outputs) of one depthwise layer shape of
MobileNetV3-Large's train step at 224x224 (the `features.N.block.1` convolutions; torchvision's stride and
kernel per block), in three forms, alternating with torch's `conv2d(groups=C)` in the same process (median of
`--repeats` after 2 warm-ups):

- `xla`: `lax.conv_general_dilated(feature_group_count=C)`, what flax's `Conv(feature_group_count=C)` emits;
- `shift`: `jaxcv.ops.conv.depthwise_shift_conv`, K*K strided slices of the padded input times a per-channel
  weight, summed (elementwise work XLA fuses into one loop; its gradients are again slices, pads and sums);
- `auto`: whatever `jaxcv.ops.conv.conv_general_dilated` picks (the rule the models use).

A `model` line weights each shape by its count in the step. Why: depthwise convolutions are where XLA:CPU is
weakest (benchmarks/README.md); this picks the form per shape. Needs torch (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from detection import _emit as emit  # benchmarks/detection.py, beside this script
from detection import _loadavg
from run import alternate  # benchmarks/run.py: alternating timed runs after warm-up

from jaxcv.ops import conv as conv_ops

# MobileNetV3-Large (torchvision `_mobilenet_v3_conf`): (input size, channels, kernel, stride, count)
LAYERS = [
    (112, 16, 3, 1, 1), (112, 64, 3, 2, 1), (56, 72, 3, 1, 1), (56, 72, 5, 2, 1), (28, 120, 5, 1, 2),
    (28, 240, 3, 2, 1), (14, 200, 3, 1, 1), (14, 184, 3, 1, 2), (14, 480, 3, 1, 1), (14, 672, 3, 1, 1),
    (14, 672, 5, 2, 1), (7, 960, 5, 1, 2),
]
FORMS = ("xla", "shift", "auto")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    import torch

    dtype = jnp.dtype(args.dtype)
    b = args.batch
    totals = {f: [0.0, 0.0] for f in FORMS}
    for h, c, k, s, count in LAYERS:
        rng = np.random.default_rng(0)
        xn = rng.normal(size=(b, h, h, c)).astype(np.float32)
        wn = (rng.normal(size=(k, k, 1, c)) * 0.2).astype(np.float32)
        p = k // 2
        pads = ((p, p), (p, p))
        x, w = jnp.asarray(xn, dtype), jnp.asarray(wn, dtype)
        tx = torch.from_numpy(xn.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
        tw = torch.from_numpy(wn.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
        bf16 = args.dtype == "bfloat16"

        def peer(tx: Any = tx, tw: Any = tw, s: int = s, p: int = p, c: int = c, bf16: bool = bf16) -> None:
            tx.grad = tw.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = torch.nn.functional.conv2d(tx, tw, stride=s, padding=p, groups=c)
            y.float().square().sum().backward()

        for form in FORMS:
            def conv(x: jax.Array, w: jax.Array, s: int = s, pads: Any = pads, c: int = c, form: str = form):
                if form == "shift":
                    return conv_ops.depthwise_shift_conv(x, w, (s, s), pads)
                fn = jax.lax.conv_general_dilated if form == "xla" else conv_ops.conv_general_dilated
                return fn(x, w, (s, s), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)

            def loss(x: jax.Array, w: jax.Array, conv: Any = conv) -> jax.Array:
                return jnp.sum(jnp.square(conv(x, w).astype(jnp.float32)))

            compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).compile()
            t_ours, t_peer = alternate(lambda c=compiled, x=x, w=w: jax.block_until_ready(c(x, w)), peer, 2,
                                       args.repeats)
            ours, theirs = statistics.median(t_ours), statistics.median(t_peer)
            totals[form][0] += count * ours
            totals[form][1] += count * theirs
            emit({"name": f"depthwise_b{b}_{h}x{h}_c{c}_k{k}s{s}", "form": form, "count": count,
                  "jaxcv_ms": round(ours * 1e3, 2), "torch_ms": round(theirs * 1e3, 2),
                  "ratio": round(ours / theirs, 3), "dtype": args.dtype, "load": _loadavg()})
    for form, (ours, theirs) in totals.items():
        emit({"name": "model_mobilenet_v3_large_depthwise", "form": form, "jaxcv_ms": round(ours * 1e3, 1),
              "torch_ms": round(theirs * 1e3, 1), "ratio": round(ours / theirs, 3), "dtype": args.dtype,
              "note": "layers weighted by their count in the model's train step"})


if __name__ == "__main__":
    from jaxcv import runtime as _runtime

    _runtime.configure()  # the CPU settings jaxcv's entry points apply (import jaxcv alone changes nothing)
    main()
