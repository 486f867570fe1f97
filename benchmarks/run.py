"""The benchmark suite: jaxcv train/inference steps side by side with their PyTorch peers.

    python benchmarks/run.py [--only=resnet50_train,retinanet_train,...,vit_small_train,pipeline]  (CASES below)
                             [--dtype float32|bfloat16] [--conv_impl auto|xla|im2col] [--repeats 5] [--warmup 2]
    python benchmarks/run.py --only=growth          # RetinaNet step vs image size and gt count

Prints one JSON line per measurement: `median_s`, `min_s`, `max_s` over `--repeats` timed steps after
`--warmup` untimed ones, `compile_s` (lowering + XLA compilation of the jitted step), the compiled
step's memory (`xla_bytes`: arguments + outputs + temporaries, from XLA's memory analysis) and the
process's peak resident memory so far. With torch installed (`pip install -e '.[bench]'`, optional),
each case's peer runs in the same process and the timed steps alternate (jaxcv, peer, jaxcv, ...) so
both see the same machine load; a `ratio` line (jaxcv median / peer median, < 1 means jaxcv is faster)
follows each pair. `--dtype bfloat16` runs jaxcv with bfloat16 compute (float32 parameters) and the
peer under `torch.autocast("cpu", dtype=torch.bfloat16)`.

Cases (all SGD momentum 0.9 unless said, random inputs, parameters and optimizer state donated):
- resnet50_train: ResNet-50, 1000 classes, batch 8, 224x224, softmax cross-entropy, BatchNorm in
  training mode. Peer: `torchvision.models.resnet50()`.
- retinanet_train: RetinaNet-R50-FPN, 91 classes, batch 2, 512x512, 5 random gts per image, focal +
  L1 loss with matching, frozen backbone BatchNorm. Peer: `retinanet_resnet50_fpn(weights=None,
  weights_backbone=None, min_size=512, max_size=512)`.
- unet34_train: U-Net-ResNet-34 (nearest 2x upsampling, as smp), 3 classes, batch 4, 256x256, cross-entropy,
  Adam. Peer:
  `segmentation_models_pytorch.Unet("resnet34", encoder_weights=None, classes=3)`.
- retinanet_infer: RetinaNet-R50-FPN forward + post-processing (score 0.05, top-1000 per level, NMS
  0.5, 100 per image), 2 images of 512x512. Peer: the same model in eval mode.
- mobilenet_v3_large_train: MobileNetV3-Large, 1000 classes, batch 32, 224x224 (depthwise convolutions).
  Peer: `torchvision.models.mobilenet_v3_large()`.
- vit_small_train: ViT-S/16, 1000 classes, batch 16, 224x224. Peer: `timm.create_model("vit_small_patch16_224")`.
- pipeline: input-pipeline throughput (images/s) of each task's training loader on the built-in
  synthetic data (`configs/synthetic_classification.py`, `shapes_retinanet.py`, `shapes_unet.py`).
- growth: RetinaNet-R50-FPN train step (batch 2) as the image grows 256..1024 (10 gts) and as the gt
  count grows 1..100 (512x512), each with the time of matching + target encoding alone and its share
  of the step.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from detection import _emit as emit  # benchmarks/detection.py, beside this script
from detection import _stats as stats
from detection import random_gt, retinanet_setup

from jaxcv import runtime
from jaxcv.config import load_config_file
from jaxcv.losses import retinanet_loss, segmentation_cross_entropy
from jaxcv.models import create_model
from jaxcv.ops.anchors import generate_anchors
from jaxcv.ops.conv import CONV_IMPLS, set_conv_impl
from jaxcv.ops.matching import detection_targets
from jaxcv.ops.postprocess import retinanet_postprocess

CASES = ("resnet50_train", "retinanet_train", "unet34_train", "retinanet_infer", "mobilenet_v3_large_train",
         "vit_small_train", "pipeline")
# classification cases: (jaxcv model / torchvision constructor, batch); 224x224, 1000 classes
CLASSIFIERS = {"resnet50_train": ("resnet50", 8), "mobilenet_v3_large_train": ("mobilenet_v3_large", 32),
               "vit_small_train": ("vit_small_patch16_224", 16)}
ROOT = Path(__file__).resolve().parents[1]
Step = Callable[[], Any]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def compile_step(fn: Callable[..., Any], *args: Any, donate: tuple[int, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """(compiled jit of fn, {compile_s, xla_bytes})."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    info: dict[str, Any] = {"compile_s": round(time.perf_counter() - t0, 2)}
    cost = compiled.cost_analysis()  # XLA's count for the whole step (a dict; a list of dicts in older jax)
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    if cost and cost.get("flops", 0) > 0:
        info["flops"] = float(cost["flops"])
    mem = compiled.memory_analysis()
    if mem is not None:
        info["xla_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                                - mem.alias_size_in_bytes)
    return compiled, info


# Dense peak FLOP/s per device (vendor spec sheets, no sparsity) for `fraction_of_peak`: bfloat16 tensor
# cores for dtype bfloat16, TF32 tensor cores for float32 (XLA's default matmul precision on NVIDIA GPUs).
PEAK_TFLOPS = {  # device_kind substring -> (bfloat16, float32)
    "H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L4": (121.0, 60.0),
    "A10": (125.0, 62.5),
    "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0), "TPU v5": (459.0, 459.0),
}


def throughput(info: dict[str, Any], median_s: float, dtype: str) -> dict[str, Any]:
    """images/s, achieved TFLOP/s (XLA's flop count of the compiled step / median time) and, on a GPU or TPU
    whose kind is in PEAK_TFLOPS, the fraction of its peak (the benchmarked steps run on one device)."""
    out: dict[str, Any] = {}
    if "batch" in info:
        out["images_per_s"] = round(info["batch"] / median_s, 2)
    if "flops" in info:
        tflops = info["flops"] / median_s / 1e12
        out["achieved_tflops"] = round(tflops, 4)
        device = jax.devices()[0]
        if device.platform != "cpu":
            kind = device.device_kind
            peak = next((v for k, v in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in kind), None)
            out["device_kind"] = kind
            if peak is not None:
                out["peak_tflops"] = peak[0] if dtype == "bfloat16" else peak[1]
                out["fraction_of_peak"] = round(tflops / out["peak_tflops"], 4)
    return out


def stateful(compiled: Any, state: list[Any], *inputs: Any) -> Step:
    """A step closure: state <- compiled(*state, *inputs)[:-1]; blocks on the last output (the loss)."""
    n = len(state)

    def step() -> None:
        out = compiled(*state, *inputs)
        state[:] = list(out[:n])
        jax.block_until_ready(out[-1])

    return step


def alternate(ours: Step, peer: Step | None, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Times `ours` and `peer` in alternation after `warmup` untimed runs of each."""
    for _ in range(warmup):
        ours()
        if peer:
            peer()
    t_ours, t_peer = [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (peer, t_peer)):
            if fn is None:
                continue
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return t_ours, t_peer


# ------------------------------------------------------------------------------------------------
# jaxcv steps: (step closure, info)
# ------------------------------------------------------------------------------------------------


def jax_resnet50(dtype: Any, batch: int = 8, size: int = 224) -> tuple[Step, dict[str, Any]]:
    return jax_classifier("resnet50", dtype, batch, size)


def jax_classifier(name: str, dtype: Any, batch: int, size: int) -> tuple[Step, dict[str, Any]]:
    """A 1000-class train step (softmax cross-entropy, SGD momentum) of registered backbone `name`."""
    model = create_model(name, num_classes=1000, dtype=dtype)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)
    y = jnp.arange(batch) % 1000
    v = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x[:1])
    tx = optax.sgd(0.01, momentum=0.9)

    def train_step(params, stats_, opt, x, y):
        def loss_fn(p):
            out, new = model.apply({"params": p, "batch_stats": stats_}, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.key(1)})
            return optax.softmax_cross_entropy_with_integer_labels(out["logits"].astype(jnp.float32), y).mean(), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new.get("batch_stats", {}), opt, loss

    state = [v["params"], v.get("batch_stats", {}), tx.init(v["params"])]
    compiled, info = compile_step(train_step, *state, x, y, donate=(0, 1, 2))
    return stateful(compiled, state, x, y), {**info, "batch": batch, "size": size}


def jax_retinanet_train(dtype: Any, batch: int = 2, size: int = 512, gts: int = 5) -> tuple[Step, dict[str, Any]]:
    r = retinanet_setup(batch, size, gts, dtype)
    model, anchors, x, v = r["model"], r["anchors"], r["images"], r["variables"]
    boxes, labels, mask = r["boxes"], r["labels"], r["mask"]
    stats_ = v["batch_stats"]
    tx = optax.sgd(0.01, momentum=0.9)

    def train_step(params, opt, x, boxes, labels, mask):
        def loss_fn(p):
            o = model.apply({"params": p, "batch_stats": stats_}, x, train=True)
            t = retinanet_loss(o["cls_logits"].astype(jnp.float32), o["bbox_regression"].astype(jnp.float32),
                               anchors, boxes, labels, mask)
            return t["classification"] + t["box_regression"]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    state = [v["params"], tx.init(v["params"])]
    compiled, info = compile_step(train_step, *state, x, boxes, labels, mask, donate=(0, 1))
    return stateful(compiled, state, x, boxes, labels, mask), {**info, "batch": batch, "size": size, "gts": gts}


def jax_matching(batch: int, size: int, gts: int) -> tuple[Step, dict[str, Any]]:
    """Matching + target encoding alone (what retinanet_loss does before the losses)."""
    anchors, _ = generate_anchors((size, size))
    boxes, labels = random_gt(np.random.default_rng(0), batch, gts, size)
    mask = np.ones(labels.shape, bool)
    compiled, info = compile_step(lambda b, lab, m: detection_targets(anchors, b, lab, m), boxes, labels, mask)
    return (lambda: jax.block_until_ready(compiled(boxes, labels, mask))), {**info, "anchors": len(anchors)}


def jax_unet34(dtype: Any, batch: int = 4, size: int = 256, classes: int = 3) -> tuple[Step, dict[str, Any]]:
    model = create_model("unet_resnet34", num_classes=classes, dtype=dtype, upsample="nearest")  # as smp's decoder
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, classes, (batch, size, size)), jnp.int32)
    v = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x[:1])
    tx = optax.adam(1e-3)

    def train_step(params, stats_, opt, x, y):
        def loss_fn(p):
            out, new = model.apply({"params": p, "batch_stats": stats_}, x, train=True, mutable=["batch_stats"])
            return segmentation_cross_entropy(out["logits"].astype(jnp.float32), y), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt, loss

    state = [v["params"], v["batch_stats"], tx.init(v["params"])]
    compiled, info = compile_step(train_step, *state, x, y, donate=(0, 1, 2))
    return stateful(compiled, state, x, y), {**info, "batch": batch, "size": size, "optimizer": "adam"}


def jax_retinanet_infer(dtype: Any, batch: int = 2, size: int = 512) -> tuple[Step, dict[str, Any]]:
    r = retinanet_setup(batch, size, dtype=dtype)
    model, anchors, per_level, x, v = r["model"], r["anchors"], r["per_level"], r["images"], r["variables"]

    def infer(v, x):
        o = model.apply(v, x, train=False)
        return retinanet_postprocess(o["cls_logits"].astype(jnp.float32), o["bbox_regression"].astype(jnp.float32),
                                     anchors, per_level, (size, size))

    compiled, info = compile_step(infer, v, x)
    return (lambda: jax.block_until_ready(compiled(v, x))), {**info, "batch": batch, "size": size}


# ------------------------------------------------------------------------------------------------
# PyTorch peers (optional): step closures, or None when torch / the peer package is missing
# ------------------------------------------------------------------------------------------------


def torch_peer(case: str, bf16: bool) -> tuple[Step | None, dict[str, Any]]:
    try:
        import torch
        import torchvision
    except ImportError as e:
        return None, {"skipped": f"peer not importable: {e}"}
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if case in CLASSIFIERS:
        batch = CLASSIFIERS[case][1]
        if case == "vit_small_train":
            try:
                import timm
            except ImportError as e:
                return None, {"skipped": f"peer not importable: {e}"}
            model = timm.create_model("vit_small_patch16_224", pretrained=False).train()
            info["timm"] = timm.__version__
        else:
            model = getattr(torchvision.models, CLASSIFIERS[case][0])().train()
        x = torch.from_numpy(rng.normal(size=(batch, 3, 224, 224)).astype(np.float32))
        y = torch.arange(batch) % 1000
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def loss() -> Any:
            return torch.nn.functional.cross_entropy(model(x), y)
    elif case in ("retinanet_train", "retinanet_infer"):
        from torchvision.models.detection import retinanet_resnet50_fpn

        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=512, max_size=512)
        x = list(torch.from_numpy(rng.normal(size=(2, 3, 512, 512)).astype(np.float32)))
        if case == "retinanet_infer":
            model.eval()

            def infer() -> None:
                with torch.no_grad(), autocast:
                    model(x)

            return infer, info
        model.train()
        boxes, labels = random_gt(rng, 2, 5, 512)
        targets = [{"boxes": torch.from_numpy(boxes[i]), "labels": torch.from_numpy(labels[i]).long()}
                   for i in range(2)]
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def loss() -> Any:
            return sum(model(x, targets).values())
    elif case == "unet34_train":
        try:
            import segmentation_models_pytorch as smp
        except ImportError as e:
            return None, {"skipped": f"peer not importable: {e}"}
        model = smp.Unet("resnet34", encoder_weights=None, classes=3).train()
        x = torch.from_numpy(rng.normal(size=(4, 3, 256, 256)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 3, (4, 256, 256)).astype(np.int64))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss() -> Any:
            return torch.nn.functional.cross_entropy(model(x), y)
    else:
        raise ValueError(case)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            value = loss()
        value.backward()
        opt.step()

    return step, info


# ------------------------------------------------------------------------------------------------


def run_pair(name: str, ours: tuple[Step, dict[str, Any]], case: str, args: argparse.Namespace) -> None:
    step, info = ours
    peer, peer_info = (None, {"skipped": "--no-peer"}) if args.no_peer else torch_peer(case, args.dtype == "bfloat16")
    t_ours, t_peer = alternate(step, peer, args.warmup, args.repeats)
    emit({"name": f"jaxcv_{name}", **stats(t_ours), **info, **throughput(info, statistics.median(t_ours), args.dtype),
          "dtype": args.dtype, "peak_rss_mb": peak_rss_mb()})
    if peer is None:
        emit({"name": f"peer_{name}", **peer_info})
        return
    emit({"name": f"peer_{name}", **stats(t_peer), **peer_info, "autocast_bf16": args.dtype == "bfloat16",
          "peak_rss_mb": peak_rss_mb()})
    emit({"name": f"ratio_{name}", "jaxcv_over_peer": round(statistics.median(t_ours) / statistics.median(t_peer), 3),
          "note": "<1 means jaxcv is faster", "dtype": args.dtype})


def bench_pipeline(args: argparse.Namespace, batches: int = 20) -> None:
    from jaxcv.data.loader import Loader
    from jaxcv.tasks import create_task

    for name in ("synthetic_classification", "shapes_retinanet", "shapes_unet"):
        config = load_config_file(ROOT / "configs" / f"{name}.py")
        task = create_task(config)
        loader = Loader(task.source("train"), task.make_transform(True), global_batch_size=config.batch_size,
                        seed=0, num_threads=config.data.get("num_threads", 4))
        it = loader.train_batches(0)
        next(it)  # start-up (threads, first batch) not timed
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - t0
        emit({"name": f"pipeline_{name}", "images_per_s": round(batches * config.batch_size / seconds, 1),
              "batch": config.batch_size, "image_size": config.data.image_size, "batches": batches})


def bench_growth(args: argparse.Namespace) -> None:
    dtype = jnp.dtype(args.dtype)
    cases = [(s, 10) for s in (256, 512, 768, 1024)] + [(512, g) for g in (1, 50, 100)]
    for size, gts in cases:
        step, info = jax_retinanet_train(dtype, size=size, gts=gts)
        t_step, _ = alternate(step, None, args.warmup, args.repeats)
        match, minfo = jax_matching(2, size, gts)
        t_match, _ = alternate(match, None, args.warmup, args.repeats)
        share = statistics.median(t_match) / statistics.median(t_step)
        emit({"name": f"growth_retinanet_train_size{size}_gt{gts}", **stats(t_step), **info,
              "anchors": minfo["anchors"], "matching_median_s": round(statistics.median(t_match), 5),
              "matching_share": round(share, 4), **throughput(info, statistics.median(t_step), args.dtype),
              "dtype": args.dtype})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)},growth")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--conv_impl", choices=CONV_IMPLS, default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    which = set(args.only.split(","))
    unknown = which - set(CASES) - {"growth"}
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; known: {', '.join(CASES)}, growth")
    if args.repeats < 5 and "growth" not in which:
        ap.error("--repeats must be >= 5 (median/min/max over at least five steps)")
    set_conv_impl(args.conv_impl)
    dtype = jnp.dtype(args.dtype)
    emit({"name": "environment", "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": jax.device_count(), "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
          "loadavg_1m": round(os.getloadavg()[0], 2), "conv_impl": args.conv_impl, "dtype": args.dtype,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_tuning": runtime.applied})
    builders = {
        "resnet50_train": lambda: jax_resnet50(dtype),
        "mobilenet_v3_large_train": lambda: jax_classifier("mobilenet_v3_large", dtype, 32, 224),
        "vit_small_train": lambda: jax_classifier("vit_small_patch16_224", dtype, 16, 224),
        "retinanet_train": lambda: jax_retinanet_train(dtype),
        "unet34_train": lambda: jax_unet34(dtype),
        "retinanet_infer": lambda: jax_retinanet_infer(dtype),
    }
    for case in CASES:
        if case in which and case in builders:
            run_pair(case, builders[case](), case, args)
    if "pipeline" in which:
        bench_pipeline(args)
    if "growth" in which:
        bench_growth(args)
    emit({"name": "environment_end", "loadavg_1m": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    runtime.configure()  # the CPU settings jaxcv's entry points apply (import jaxcv alone changes nothing)
    main()
