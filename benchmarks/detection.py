"""Detection benchmarks: RetinaNet-R50-FPN train/inference, matching + targets, NMS, COCO evaluation.

    python benchmarks/detection.py [--only=retinanet_train,retinanet_infer,matching,nms,coco]
                                   [--repeats 5] [--warmup 1] [--no-peer]

Prints one JSON line per measurement: `name`, `median_s`/`min_s`/`max_s` over `--repeats` timed runs
(after `--warmup` untimed ones; each run synchronised with `block_until_ready`), and `compile_s` for
jitted work (lowering + XLA compilation, measured separately). Benchmarks:

- retinanet_train: one SGD (momentum 0.9) step of RetinaNet-R50-FPN (91 classes, frozen backbone
  BatchNorm as torchvision) on 2 random 512x512 images with 5 random gt boxes each: forward,
  `retinanet_loss` (matching included), backward, update; parameters/optimizer state donated.
- retinanet_infer: forward + `retinanet_postprocess` (score 0.05, top-1000 per level, NMS 0.5, 100
  per image) for 2 images of 512x512.
- matching: `detection_targets` (IoU, Matcher with low-quality matches, box encoding) for 2 images,
  as the gt count grows (1, 10, 50, 100 at 512x512) and as the anchors grow (image 256..1024, 10 gts).
- nms: `nms` on 10k random boxes (xy uniform in [0, 1000), sides in [4, 100)) keeping up to all of
  them (torchvision `nms` semantics) and keeping the top 100.
- coco: `jaxcv.evaluation.coco.coco_evaluate` vs pycocotools (`loadRes` + evaluate + accumulate +
  summarize) on the same random results (500 images x 100 detections, 1-15 gts of 80 categories per
  image); both lines report the stats' max abs difference.

The peer (torch + torchvision, optional and not a dependency) runs the same work in the same process,
so both see the same machine load, and a ratio line follows each pair; without it one "skipped" line
gives the reference numbers measured earlier (torchvision RetinaNet-R50-FPN batch 2 512x512 train step
6.2 s, inference of 2 images 1.9 s, nms on 10k random boxes 0.43 s) and their ratio to ours.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
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

from jaxcv.evaluation.coco import STAT_NAMES, coco_evaluate
from jaxcv.losses import retinanet_loss
from jaxcv.models import create_model
from jaxcv.ops.anchors import generate_anchors
from jaxcv.ops.matching import detection_targets
from jaxcv.ops.nms import nms
from jaxcv.ops.postprocess import retinanet_postprocess

BENCHMARKS = ("retinanet_train", "retinanet_infer", "matching", "nms", "coco")
# torchvision on the 2-core development CPU (measured earlier; used when the peer is not importable).
TORCHVISION_REFERENCE_S = {"retinanet_train": 6.2, "retinanet_infer": 1.9, "nms_10k": 0.43}
NUM_CLASSES = 91
GT_PER_IMAGE = 5


def _stats(times: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(times), 5),
        "min_s": round(min(times), 5),
        "max_s": round(max(times), 5),
        "runs": len(times),
    }


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _loadavg() -> float | None:
    """The 1-minute load average (the machine may be shared: read timings against it)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _time(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _compile(fn: Callable[..., Any], *args: Any, donate: tuple[int, ...] = (), static: tuple[int, ...] = ()):
    """(compiled function, compile seconds) of `jax.jit(fn)` for these arguments."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate, static_argnums=static).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def random_gt(rng: np.random.Generator, batch: int, num: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """boxes [B, num, 4] xyxy pixels (sides 16..size/2) inside a size x size image, labels [B, num]."""
    wh = rng.uniform(16, size / 2, (batch, num, 2))
    xy = rng.uniform(0, 1, (batch, num, 2)) * (size - wh)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    return boxes, rng.integers(0, NUM_CLASSES, (batch, num)).astype(np.int32)


def random_nms_boxes(n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n boxes [n, 4] xyxy with xy uniform in [0, 1000) and sides in [4, 100); scores uniform [0, 1)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(4, 100, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# jaxcv
# ------------------------------------------------------------------------------------------------


def retinanet_setup(batch: int, size: int, gts: int = GT_PER_IMAGE, dtype: Any = jnp.float32) -> dict[str, Any]:
    """RetinaNet-R50-FPN (NUM_CLASSES) with its variables, anchors [A, 4] and per-level counts, random
    images [B, S, S, 3] and `gts` random gt boxes/labels/mask per image (shared with run.py)."""
    model = create_model("retinanet", num_classes=NUM_CLASSES, backbone="resnet50", dtype=dtype)
    anchors, per_level = generate_anchors((size, size))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
    boxes, labels = random_gt(rng, batch, gts, size)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])
    return {"model": model, "variables": variables, "anchors": anchors, "per_level": per_level, "images": images,
            "boxes": boxes, "labels": labels, "mask": np.ones(labels.shape, bool)}


def bench_retinanet(args: argparse.Namespace, which: set[str]) -> dict[str, float]:
    """retinanet_train and/or retinanet_infer; returns {name: median seconds}."""
    size, batch = args.size, args.batch
    r = retinanet_setup(batch, size)
    model, anchors, per_level, images = r["model"], r["anchors"], r["per_level"], r["images"]
    boxes, labels, mask = r["boxes"], r["labels"], r["mask"]
    params, batch_stats = r["variables"]["params"], r["variables"]["batch_stats"]
    out: dict[str, float] = {}
    common = {"batch": batch, "size": size, "classes": NUM_CLASSES, "backend": jax.default_backend(),
              "device": str(jax.devices()[0].device_kind)}

    if "retinanet_train" in which:
        tx = optax.sgd(0.01, momentum=0.9)
        opt_state = tx.init(params)

        def train_step(params, opt_state, x, gt_boxes, gt_labels, gt_mask):
            def loss_fn(p):
                o = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True)
                t = retinanet_loss(o["cls_logits"], o["bbox_regression"], anchors, gt_boxes, gt_labels, gt_mask)
                return t["classification"] + t["box_regression"]

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        step, compile_s = _compile(train_step, params, opt_state, images, boxes, labels, mask, donate=(0, 1))
        state = [params, opt_state]
        losses: list[float] = []

        def run() -> None:
            p, o, loss = step(*state, images, boxes, labels, mask)
            state[:] = [p, o]
            losses.append(float(jax.block_until_ready(loss)))

        times = _time(run, args.warmup, args.repeats)
        n_params = sum(x.size for x in jax.tree_util.tree_leaves(state[0]))
        rec = {"name": "jaxcv_retinanet_r50_fpn_train_step", **_stats(times), "compile_s": round(compile_s, 2),
               "optimizer": "sgd(0.01, momentum=0.9)", "params": int(n_params),
               "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4), **common}
        _emit(rec)
        out["retinanet_train"] = rec["median_s"]
        params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images[:1])["params"]

    if "retinanet_infer" in which:
        def infer(params, x):
            o = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
            return retinanet_postprocess(o["cls_logits"], o["bbox_regression"], anchors, per_level, (size, size))

        fn, compile_s = _compile(infer, params, images)
        times = _time(lambda: jax.block_until_ready(fn(params, images)), args.warmup, args.repeats)
        rec = {"name": "jaxcv_retinanet_r50_fpn_inference", **_stats(times), "compile_s": round(compile_s, 2),
               "includes": "forward + postprocess (score 0.05, top1000/level, nms 0.5, 100/img)", **common}
        _emit(rec)
        out["retinanet_infer"] = rec["median_s"]
    return out


def matching_cases() -> list[tuple[str, int, int]]:
    """(name, image size, gt count) of the matching sweep."""
    return [*[(f"gt{g}_img512", 512, g) for g in (1, 10, 50, 100)],
            *[(f"gt10_img{s}", s, 10) for s in (256, 768, 1024)]]


def bench_matching(args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for case, size, num_gt in matching_cases():
        anchors, _ = generate_anchors((size, size))
        boxes, labels = random_gt(np.random.default_rng(num_gt), args.batch, num_gt, size)
        mask = np.ones(labels.shape, bool)
        a = jnp.asarray(anchors)
        fn, compile_s = _compile(detection_targets, a, boxes, labels, mask)
        times = _time(lambda fn=fn, a=a, b=boxes, lab=labels, m=mask: jax.block_until_ready(fn(a, b, lab, m)),
                      args.warmup, args.repeats)
        rec = {"name": f"jaxcv_matching_targets_{case}", **_stats(times), "compile_s": round(compile_s, 2),
               "batch": args.batch, "anchors": int(len(anchors)), "gt_per_image": num_gt, "image": size}
        _emit(rec)
        out[f"matching_{case}"] = rec["median_s"]
    return out


def bench_nms(args: argparse.Namespace) -> dict[str, float]:
    boxes, scores = random_nms_boxes()
    b, s = jnp.asarray(boxes), jnp.asarray(scores)
    out = {}
    for label, max_out in (("10k", len(boxes)), ("10k_top100", 100)):
        fn, compile_s = _compile(lambda b, s, m=max_out: nms(b, s, 0.5, m), b, s)
        times = _time(lambda fn=fn: jax.block_until_ready(fn(b, s)), args.warmup, args.repeats)
        _, valid = fn(b, s)
        rec = {"name": f"jaxcv_nms_{label}", **_stats(times), "compile_s": round(compile_s, 2),
               "boxes": len(boxes), "iou": 0.5, "max_output": max_out, "kept": int(np.asarray(valid).sum())}
        _emit(rec)
        out[f"nms_{label}"] = rec["median_s"]
    return out


def random_coco(num_images: int = 500, dets: int = 100, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO gt dict (640x480 images, 1-15 boxes of 80 categories each) and `dets` results per image:
    half jittered copies of gt boxes (so some match), half random boxes, uniform scores."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 81)]
    images, anns, results = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": 640, "height": 480})
        n = int(rng.integers(1, 16))
        wh = rng.uniform(4, 300, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([640, 480]) - wh)
        gt_cats = rng.integers(1, 81, n)
        for (x, y), (w, h), c in zip(xy, wh, gt_cats, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": 0})
        src = rng.integers(0, n, dets // 2)
        jit_xy = xy[src] + rng.normal(0, 8, (len(src), 2))
        jit_wh = wh[src] * rng.uniform(0.8, 1.25, (len(src), 2))
        rand_wh = rng.uniform(4, 300, (dets - len(src), 2))
        rand_xy = rng.uniform(0, 1, (dets - len(src), 2)) * (np.array([640, 480]) - rand_wh)
        det_xy, det_wh = np.concatenate([jit_xy, rand_xy]), np.concatenate([jit_wh, rand_wh])
        det_cats = np.concatenate([gt_cats[src], rng.integers(1, 81, dets - len(src))])
        for (x, y), (w, h), c, s in zip(det_xy, det_wh, det_cats, rng.uniform(0, 1, dets), strict=True):
            results.append({"image_id": i, "category_id": int(c), "bbox": [float(x), float(y), float(w), float(h)],
                            "score": float(s)})
    return {"images": images, "annotations": anns, "categories": cats}, results


def pycocotools_stats(gt: dict, results: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def bench_coco(args: argparse.Namespace) -> dict[str, float]:
    gt, results = random_coco()
    ours: dict[str, float] = {}
    times = _time(lambda: ours.update(coco_evaluate(gt, results)), args.warmup, args.repeats)
    ref: list[np.ndarray] = []
    try:
        ref_times = _time(lambda: ref.append(pycocotools_stats(gt, results)), args.warmup, args.repeats)
    except ImportError as e:
        _emit({"name": "pycocotools_coco_eval", "skipped": True, "reason": f"not importable: {e}"})
        ref_times = []
    diff = float(np.max(np.abs(np.array([ours[k] for k in STAT_NAMES]) - ref[-1]))) if ref else None
    common = {"images": len(gt["images"]), "gts": len(gt["annotations"]), "detections": len(results),
              "AP": round(ours["AP"], 5), "max_abs_diff_vs_pycocotools": diff}
    rec = {"name": "jaxcv_coco_eval_500x100", **_stats(times), **common}
    _emit(rec)
    if ref_times:
        peer = {"name": "pycocotools_coco_eval_500x100", **_stats(ref_times), **common}
        _emit(peer)
        _emit({"name": "ratio_pycocotools_over_jaxcv_coco_eval",
               "median_ratio": round(peer["median_s"] / rec["median_s"], 3), "note": ">1 means jaxcv is faster"})
    return {"coco": rec["median_s"]}


# ------------------------------------------------------------------------------------------------
# torchvision peer (optional)
# ------------------------------------------------------------------------------------------------


def bench_torchvision(args: argparse.Namespace, which: set[str], ours: dict[str, float]) -> None:
    """The same work in torchvision, each followed by a ratio line (peer / jaxcv median)."""
    import torch
    import torchvision
    from torchvision.models.detection import retinanet_resnet50_fpn
    from torchvision.models.detection._utils import BoxCoder, Matcher

    def emit_pair(key: str, name: str, times: list[float], extra: dict[str, Any]) -> None:
        rec = {"name": name, **_stats(times), "torch": torch.__version__, "torchvision": torchvision.__version__,
               "threads": torch.get_num_threads(), **extra}
        _emit(rec)
        if key in ours:
            _emit({"name": f"ratio_torchvision_over_jaxcv_{key}", "median_ratio": round(rec["median_s"] / ours[key], 3),
                   "note": ">1 means jaxcv is faster"})

    torch.manual_seed(0)
    size, batch = args.size, args.batch
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32))
    boxes, labels = random_gt(rng, batch, GT_PER_IMAGE, size)
    if which & {"retinanet_train", "retinanet_infer"}:
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                                       min_size=size, max_size=size)
    if "retinanet_train" in which:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        targets = [{"boxes": torch.from_numpy(boxes[i]), "labels": torch.from_numpy(labels[i]).long()}
                   for i in range(batch)]

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            losses = model(list(x), targets)
            sum(losses.values()).backward()
            opt.step()

        emit_pair("retinanet_train", "torchvision_retinanet_r50_fpn_train_step",
                  _time(step, args.warmup, args.repeats), {"batch": batch, "size": size})
    if "retinanet_infer" in which:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(list(x))

        emit_pair("retinanet_infer", "torchvision_retinanet_r50_fpn_inference",
                  _time(infer, args.warmup, args.repeats), {"batch": batch, "size": size})
    if "matching" in which:
        matcher, coder = Matcher(0.5, 0.4, allow_low_quality_matches=True), BoxCoder((1.0, 1.0, 1.0, 1.0))
        for case, img, num_gt in matching_cases():
            anchors = torch.from_numpy(generate_anchors((img, img))[0])
            gb, _ = random_gt(np.random.default_rng(num_gt), batch, num_gt, img)
            gts = [torch.from_numpy(g) for g in gb]

            def match(anchors=anchors, gts=gts) -> None:
                for g in gts:  # torchvision RetinaNet matches image by image
                    idx = matcher(torchvision.ops.box_iou(g, anchors))
                    coder.encode_single(g[idx.clamp(min=0)], anchors)

            emit_pair(f"matching_{case}", f"torchvision_matching_targets_{case}",
                      _time(match, args.warmup, args.repeats), {"anchors": len(anchors), "gt_per_image": num_gt})
    if "nms" in which:
        b, s = (torch.from_numpy(a) for a in random_nms_boxes())
        emit_pair("nms_10k", "torchvision_nms_10k",
                  _time(lambda: torchvision.ops.nms(b, s, 0.5), args.warmup, args.repeats), {"boxes": len(b)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (>= 5)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--no-peer", action="store_true", help="skip the torchvision peer even if importable")
    args = ap.parse_args()
    which = {w.strip() for w in args.only.split(",") if w.strip()}
    unknown = which - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {','.join(BENCHMARKS)}")
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (median/min/max over at least five runs)")

    _emit({"name": "environment", "jax": jax.__version__, "backend": jax.default_backend(),
           "devices": jax.device_count(), "cpus": os.cpu_count(),
           "loadavg_1m": _loadavg()})
    ours: dict[str, float] = {}
    if which & {"retinanet_train", "retinanet_infer"}:
        ours.update(bench_retinanet(args, which))
    if "matching" in which:
        ours.update(bench_matching(args))
    if "nms" in which:
        ours.update(bench_nms(args))
    if "coco" in which:
        ours.update(bench_coco(args))
    if not args.no_peer:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError as e:
            refs = TORCHVISION_REFERENCE_S
            if (args.batch, args.size) != (2, 512):  # the RetinaNet references are for batch 2, 512x512
                ours = {k: v for k, v in ours.items() if not k.startswith("retinanet")}
            _emit({"name": "torchvision_peer", "skipped": True, "reason": f"peer not importable: {e}",
                   "reference_s_dev_cpu": refs,
                   "reference_over_jaxcv_median": {k: round(v / ours[k], 3) for k, v in refs.items() if k in ours},
                   "note": "references measured earlier on the 2-core dev CPU, not in this run"})
        else:
            bench_torchvision(args, which, ours)
    _emit({"name": "environment_end", "loadavg_1m": _loadavg()})


if __name__ == "__main__":
    from jaxcv import runtime as _runtime

    _runtime.configure()  # the CPU settings jaxcv's entry points apply (import jaxcv alone changes nothing)
    main()
