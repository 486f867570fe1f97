"""YOLOv8n: jaxcv against ultralytics (torch) in the same run, when it is installed.

    python benchmarks/yolo.py [--only=infer,train,loss_share[,parts]] [--batches 1,8] [--gts 1,10,30,100]
                              [--step-gts 1,10,100] [--train-gts 10] [--size 640] [--warmup 1] [--repeats 3]
                              [--threads N] [--peer-sweep] [--no-peer]

One JSON line per measurement: `median_s`, `min_s`, `max_s` over `--repeats` timed calls after `--warmup`
untimed ones (jaxcv's compilation, ahead of time, is timed apart as `compile_s`), and the 1-minute load average.
With ultralytics and torch importable (`pip install ultralytics`, optional, never a dependency of jaxcv or its
tests), ultralytics' own `DetectionModel("yolov8n.yaml", nc=80)` is built after `torch.manual_seed(0)` (the yaml
ships in the package: nothing is downloaded) and its random weights are loaded into jaxcv with
`jaxcv.interop.from_ultralytics`, so both run the same weights; the timed calls alternate (jaxcv, peer, jaxcv, ...)
so both see the same load, and a `ratio` line (jaxcv median / peer median, < 1: jaxcv faster) follows each pair.
`sanity` lines give how far the two agree (the eval output, the first training loss). torch runs with
`--threads` intra-op threads (default: all cores, what XLA:CPU uses). Without the peer, jaxcv runs on its own
random init.

Cases (batch of random images in [0, 1), random gt boxes: sides 16..size/2 px, 80 classes, the same for both):
- infer: images/s of the forward pass to the decoded output at `--size` px for each of `--batches` (jaxcv
  `decoded` [B, A, 4 + K], ultralytics' eval output `y`; no NMS). The peer is `fuse()`d (Conv+BN folded), as
  ultralytics' predictor runs it.
- train: one training step at batch `--batches`' largest and `--train-gts` boxes per image: forward in train mode
  (batch statistics), the v8 loss (jaxcv `yolov8_loss` = ultralytics' `v8DetectionLoss(...)[0].sum()`, gains 7.5
  / 0.5 / 1.5, TAL top-10), backward, gradient norm clipped at 10, SGD (lr 0.01, momentum 0.937, Nesterov, weight
  decay 5e-4: ultralytics' SGD settings) and the BatchNorm statistics update. jaxcv's step is one jitted function
  with parameters, optimizer state and statistics donated.
- loss_share: as the padded gt count G grows (`--gts`, all G boxes real), the seconds of the loss alone (jitted
  `yolov8_loss` on fixed head outputs: `loss_fwd` its value, `loss_fwd_bwd` value and gradient w.r.t. the head
  outputs) against the whole train step compiled for the same G (for the G in `--step-gts`: each costs a
  compilation of the step, so the default leaves 30 out to stay under 8 minutes on a loaded 2-core machine);
  `share_of_step` = loss_fwd_bwd / step. The peer's loss (`v8DetectionLoss` forward + backward to the head
  outputs) is timed at every G; its whole step only at `--train-gts` (at every step G with `--peer-sweep`).
- parts (not run by default): where a step's time goes: the train-mode forward alone and forward + backward of
  the network with a stand-in scalar (the outputs' mean) instead of the v8 loss, for both.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from timing import alternate, emit, loadavg, parse_cases, stats

from jaxcv import runtime
from jaxcv.models.yolov8 import YOLOv8
from jaxcv.ops.yolov8_loss import yolov8_loss

CASES = ("infer", "train", "loss_share", "parts")
DEFAULT = "infer,train,loss_share"
NUM_CLASSES = 80
PEER = "ultralytics"


def report(name: str, times: dict[str, list[float]], record: dict[str, Any], extra: dict[str, dict] | None = None,
           per_s: tuple[str, int] | None = None) -> None:
    """A line per implementation (with `per_s`: (unit, count) also count / median as `<unit>_per_s`), then the
    ratio line when both ran."""
    for impl, t in times.items():
        rate = {f"{per_s[0]}_per_s": round(per_s[1] / statistics.median(t), 2)} if per_s else {}
        emit({"name": name, **record, "impl": impl, **(extra or {}).get(impl, {}), **stats(t), **rate,
              "load": loadavg()})
    if PEER in times and "jaxcv" in times:
        emit({"name": f"{name}_ratio", **record,
              "ratio": round(statistics.median(times["jaxcv"]) / statistics.median(times[PEER]), 3)})


def compiled(fn: Callable[..., Any], *args: Any, donate: tuple[int, ...] = ()) -> tuple[Callable[..., Any], float]:
    """(`jax.jit(fn)` compiled for these arguments, compile seconds)."""
    t0 = time.perf_counter()
    out = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return out, round(time.perf_counter() - t0, 2)


def random_batch(batch: int, size: int, gts: int, seed: int = 0) -> dict[str, np.ndarray]:
    """images [B, S, S, 3] in [0, 1); gt boxes [B, G, 4] xyxy px (sides 16..S/2), labels [B, G], mask all True."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    wh = rng.uniform(16, size / 2, (batch, gts, 2))
    xy = rng.uniform(0, 1, (batch, gts, 2)) * (size - wh)
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch, gts)).astype(np.int32)
    return {"images": images, "boxes": boxes, "labels": labels, "mask": np.ones((batch, gts), bool)}


class Models:
    """jaxcv's YOLOv8n and (with the peer) ultralytics' own, from one random init."""

    def __init__(self, peer: bool):
        self.peer = None
        if peer:
            import torch
            from ultralytics.nn.tasks import DetectionModel

            from jaxcv.interop import from_ultralytics

            torch.manual_seed(0)
            self.peer = DetectionModel("yolov8n.yaml", nc=NUM_CLASSES, verbose=False)
            self.peer.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)  # ultralytics' default.yaml gains
            self.initial = copy.deepcopy(self.peer.state_dict())
            sd = {k: v.detach().numpy() for k, v in self.peer.state_dict().items()}
            self.module, self.variables = from_ultralytics("yolov8n", sd, num_classes=NUM_CLASSES)
        else:
            self.module = YOLOv8("n", NUM_CLASSES)
            self.variables = jax.jit(lambda k: self.module.init(k, jnp.zeros((1, 64, 64, 3))))(jax.random.key(0))

    def peer_model(self, fused: bool = False) -> Any:
        """A fresh copy of the peer at the shared initial weights (fused: Conv+BN folded, eval mode)."""
        model = copy.deepcopy(self.peer)
        model.load_state_dict(self.initial)
        return model.eval().fuse(verbose=False) if fused else model

    def fresh_variables(self) -> Any:
        """A copy of jaxcv's initial variables (the train step donates its arguments)."""
        return jax.tree_util.tree_map(jnp.array, self.variables)


def nchw(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def peer_targets(batch: dict[str, np.ndarray], size: int) -> dict[str, Any]:
    """ultralytics' training batch targets: batch_idx [N], cls [N, 1], bboxes [N, 4] normalized xywh."""
    import torch

    b, g = batch["labels"].shape
    boxes = batch["boxes"].reshape(-1, 4)
    xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / size
    return {"batch_idx": torch.from_numpy(np.repeat(np.arange(b), g).astype(np.float32)),
            "cls": torch.from_numpy(batch["labels"].reshape(-1, 1).astype(np.float32)),
            "bboxes": torch.from_numpy(xywh.astype(np.float32))}


# --- the cases --------------------------------------------------------------------------------------------------


def bench_infer(models: Models, args: argparse.Namespace) -> None:
    module = models.module
    fn = jax.jit(lambda v, x: module.apply(v, x, train=False)["decoded"])
    peer = models.peer_model(fused=True) if models.peer is not None else None
    for b in args.batch_sizes:
        x = random_batch(b, args.size, 1)["images"]
        xj = jnp.asarray(x)
        fn_b, compile_s = compiled(fn, models.variables, xj)
        fns = {"jaxcv": lambda f=fn_b, x=xj: jax.block_until_ready(f(models.variables, x))}
        extra: dict[str, dict] = {"jaxcv": {"compile_s": compile_s}}
        if peer is not None:
            import torch

            xt = nchw(x)

            def run_peer(xt: Any = xt) -> Any:
                with torch.inference_mode():
                    return peer(xt)[0]

            fns[PEER] = run_peer
            if b == args.batch_sizes[0]:  # same weights: the decoded outputs agree
                ours = np.asarray(fns["jaxcv"]())
                theirs = run_peer().numpy().transpose(0, 2, 1)
                emit({"name": "sanity_decoded", "batch": b, "max_abs": float(np.abs(ours - theirs).max()),
                      "rel_to_max": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
                      "peer": "fused (Conv+BN folded)"})
        times = alternate(fns, args.warmup, args.repeats)
        report("infer", times, {"batch": b, "size": args.size, "output": "decoded, no NMS"}, extra, ("images", b))


class JaxTrain:
    """jaxcv's train step (module docstring) compiled for one gt count, and the loss alone on fixed outputs."""

    def __init__(self, models: Models, size: int):
        self.models, self.size = models, size
        self.tx = optax.chain(optax.clip_by_global_norm(10.0), optax.add_decayed_weights(5e-4),
                              optax.sgd(0.01, momentum=0.937, nesterov=True))
        module, hw = models.module, (size, size)

        def loss_fn(outputs: dict[str, jax.Array], boxes: jax.Array, labels: jax.Array, mask: jax.Array):
            return yolov8_loss(outputs["boxes"], outputs["scores"], boxes, labels, mask, image_hw=hw)["loss"]

        def step(params, batch_stats, opt_state, x, boxes, labels, mask):
            def objective(p):
                out, new = module.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                        mutable=["batch_stats"])
                return loss_fn(out, boxes, labels, mask), new["batch_stats"]

            (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, loss

        self.loss_fn, self.step_fn = loss_fn, step
        self.outputs = None

    def state(self) -> list[Any]:
        v = self.models.fresh_variables()
        return [v["params"], v["batch_stats"], self.tx.init(v["params"])]

    def step(self, batch: dict[str, np.ndarray]) -> tuple[Callable[[], float], float, list[float]]:
        """(run one step -> loss, compile seconds, the losses of every run so far)."""
        state = self.state()
        data = [jnp.asarray(batch[k]) for k in ("images", "boxes", "labels", "mask")]
        fn, compile_s = compiled(self.step_fn, *state, *data, donate=(0, 1, 2))
        losses: list[float] = []

        def run() -> float:
            p, s, o, loss = fn(*state, *data)
            state[:] = [p, s, o]
            losses.append(float(jax.block_until_ready(loss)))
            return losses[-1]

        return run, compile_s, losses

    def head_outputs(self, images: np.ndarray) -> dict[str, jax.Array]:
        """boxes/scores of the initial weights' train-mode forward (the loss-only timings' fixed inputs)."""
        if self.outputs is None:
            v = self.models.variables
            out, _ = jax.jit(lambda v, x: self.models.module.apply(v, x, train=True, mutable=["batch_stats"]))(
                v, jnp.asarray(images))
            self.outputs = {"boxes": out["boxes"], "scores": out["scores"]}
        return self.outputs

    def loss_only(self, batch: dict[str, np.ndarray]) -> dict[str, tuple[Callable[[], Any], float]]:
        outs = self.head_outputs(batch["images"])
        gt = [jnp.asarray(batch[k]) for k in ("boxes", "labels", "mask")]
        fwd, c_fwd = compiled(self.loss_fn, outs, *gt)
        both, c_both = compiled(jax.value_and_grad(self.loss_fn), outs, *gt)
        return {"loss_fwd": (lambda: jax.block_until_ready(fwd(outs, *gt)), c_fwd),
                "loss_fwd_bwd": (lambda: jax.block_until_ready(both(outs, *gt)), c_both)}


class PeerTrain:
    """ultralytics' step: `v8DetectionLoss`, `loss.sum().backward()`, `clip_grad_norm_(10)`, torch SGD."""

    def __init__(self, models: Models, size: int):
        import torch
        from ultralytics.utils.loss import v8DetectionLoss

        self.torch, self.size = torch, size
        self.model = models.peer_model().train()
        self.criterion = v8DetectionLoss(self.model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.937, nesterov=True,
                                   weight_decay=5e-4)
        self.outputs = None

    def step(self, batch: dict[str, np.ndarray]) -> tuple[Callable[[], float], list[float]]:
        x, targets = nchw(batch["images"]), peer_targets(batch, self.size)
        losses: list[float] = []

        def run() -> float:
            self.opt.zero_grad(set_to_none=True)
            loss = self.criterion(self.model(x), targets)[0].sum()
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
            self.opt.step()
            losses.append(float(loss.detach()))
            return losses[-1]

        return run, losses

    def loss_only(self, batch: dict[str, np.ndarray], initial: Any) -> Callable[[], Any]:
        """The loss forward + backward to fixed head outputs (leaves), from the initial weights' forward."""
        if self.outputs is None:
            with self.torch.no_grad():
                self.outputs = initial.train()(nchw(batch["images"]))
        targets = peer_targets(batch, self.size)

        def run() -> Any:
            preds = {"boxes": self.outputs["boxes"].detach().requires_grad_(),
                     "scores": self.outputs["scores"].detach().requires_grad_(), "feats": self.outputs["feats"]}
            self.criterion(preds, targets)[0].sum().backward()

        return run


def bench_train(models: Models, args: argparse.Namespace, jt: JaxTrain, pt: PeerTrain | None) -> dict[str, float]:
    """The train case; returns the step medians {impl: s} (the loss share's whole step at `--train-gts`)."""
    b = max(args.batch_sizes)
    batch = random_batch(b, args.size, args.train_gts, seed=args.train_gts)
    run, compile_s, losses = jt.step(batch)
    fns: dict[str, Callable[[], Any]] = {"jaxcv": run}
    peer_losses: list[float] = []
    if pt is not None:
        fns[PEER], peer_losses = pt.step(batch)
    times = alternate(fns, args.warmup, args.repeats)
    record = {"batch": b, "size": args.size, "gt_per_image": args.train_gts}
    extra = {"jaxcv": {"compile_s": compile_s, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}}
    if peer_losses:
        extra[PEER] = {"loss_first": round(peer_losses[0], 4), "loss_last": round(peer_losses[-1], 4),
                       "torch_threads": pt.torch.get_num_threads()}
        emit({"name": "sanity_first_loss", "jaxcv": losses[0], PEER: peer_losses[0],
              "rel": abs(losses[0] - peer_losses[0]) / abs(peer_losses[0])})
    report("train_step", times, record, extra, ("images", b))
    return {k: statistics.median(t) for k, t in times.items()}


def bench_loss_share(models: Models, args: argparse.Namespace, jt: JaxTrain, pt: PeerTrain | None,
                     train_step_s: dict[str, float]) -> None:
    b = max(args.batch_sizes)
    initial = models.peer_model() if pt is not None else None
    for g in args.gt_counts:
        batch = random_batch(b, args.size, g, seed=g)
        record = {"batch": b, "size": args.size, "gt_per_image": g}
        parts = jt.loss_only(batch)
        fns: dict[str, Callable[[], Any]] = {k: fn for k, (fn, _) in parts.items()}
        if pt is not None:
            fns["peer_loss_fwd_bwd"] = pt.loss_only(batch, initial)
        step_s: dict[str, float] = {}
        compile_s = None
        if g == args.train_gts and train_step_s:
            step_s = dict(train_step_s)
        elif g in args.step_gt_counts:
            run, compile_s, _ = jt.step(batch)
            fns["jaxcv_step"] = run
            if pt is not None and args.peer_sweep:
                fns["peer_step"] = pt.step(batch)[0]
        times = alternate(fns, args.warmup, args.repeats)
        med = {k: statistics.median(t) for k, t in times.items()}
        if "jaxcv_step" in med:
            step_s["jaxcv"] = med["jaxcv_step"]
        if "peer_step" in med:
            step_s[PEER] = med["peer_step"]
        for key, t in times.items():
            impl = PEER if key.startswith("peer") else "jaxcv"
            what = key.removeprefix("peer_").removeprefix("jaxcv_")
            extra = {"compile_s": parts[key][1]} if key in parts else {}
            if key == "jaxcv_step":
                extra = {"compile_s": compile_s}
            share = ({"share_of_step": round(med[key] / step_s[impl], 4)}
                     if what == "loss_fwd_bwd" and step_s.get(impl) else {})
            emit({"name": f"loss_share_{what}", **record, "impl": impl, **extra, **stats(t), **share,
                  "load": loadavg()})
        if PEER in step_s and step_s.get("jaxcv"):
            emit({"name": "loss_share_step_ratio", **record, "ratio": round(step_s["jaxcv"] / step_s[PEER], 3),
                  "note": "whole train steps at this gt count"})


def bench_parts(models: Models, args: argparse.Namespace) -> None:
    """Train-mode forward, and forward + backward with a stand-in scalar (no v8 loss), for both."""
    b = max(args.batch_sizes)
    x = random_batch(b, args.size, 1)["images"]
    module, v = models.module, models.variables

    def forward(params, x):
        out, _ = module.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                              mutable=["batch_stats"])
        return out["boxes"], out["scores"]

    def stand_in(params, x):
        boxes, scores = forward(params, x)
        return jnp.mean(boxes) + jnp.mean(scores)

    xj = jnp.asarray(x)
    fwd, c_fwd = compiled(forward, v["params"], xj)
    bwd, c_bwd = compiled(jax.grad(stand_in), v["params"], xj)
    fns: dict[str, dict[str, Callable[[], Any]]] = {
        "forward_train": {"jaxcv": lambda: jax.block_until_ready(fwd(v["params"], xj))},
        "forward_backward_no_loss": {"jaxcv": lambda: jax.block_until_ready(bwd(v["params"], xj))}}
    compile_s = {"forward_train": c_fwd, "forward_backward_no_loss": c_bwd}
    if models.peer is not None:
        import torch

        peer, xt = models.peer_model().train(), nchw(x)

        def peer_forward() -> Any:
            with torch.no_grad():
                return peer(xt)

        def peer_backward() -> None:
            peer.zero_grad(set_to_none=True)
            out = peer(xt)
            (out["boxes"].mean() + out["scores"].mean()).backward()

        fns["forward_train"][PEER], fns["forward_backward_no_loss"][PEER] = peer_forward, peer_backward
    for name, pair in fns.items():
        report(f"parts_{name}", alternate(pair, args.warmup, args.repeats), {"batch": b, "size": args.size},
               {"jaxcv": {"compile_s": compile_s[name]}}, ("images", b))


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=DEFAULT, help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--batches", default="1,8", help="inference batch sizes; the largest is the train batch")
    ap.add_argument("--gts", default="1,10,30,100", help="padded gt counts of the loss share")
    ap.add_argument("--step-gts", default="1,10,100", help="gt counts at which the loss share times whole steps")
    ap.add_argument("--train-gts", type=int, default=10, help="gt boxes per image of the train step")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    ap.add_argument("--peer-sweep", action="store_true", help="time the peer's whole step at every gt count")
    ap.add_argument("--no-peer", action="store_true", help="skip ultralytics even if importable")
    args = ap.parse_args()
    which = parse_cases(ap, args.only, CASES)
    args.batch_sizes, args.gt_counts, args.step_gt_counts = ints(args.batches), ints(args.gts), ints(args.step_gts)
    if args.size % 32:
        ap.error(f"--size={args.size}: must be a multiple of 32 (YOLOv8's largest stride)")
    applied = runtime.configure()
    peer = not args.no_peer
    env: dict[str, Any] = {"name": "environment", "jax": jax.__version__, "backend": jax.default_backend(),
                           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                           "jaxcv_runtime": applied, "loadavg_1m": loadavg()}
    if peer:
        try:
            import torch
            import ultralytics

            torch.set_num_threads(args.threads)
            env.update(torch=torch.__version__, ultralytics=ultralytics.__version__,
                       torch_threads=torch.get_num_threads())
        except ImportError as e:
            peer = False
            env["peer_skipped"] = f"ultralytics/torch not importable: {e}"
    emit(env)
    models = Models(peer)
    jt = JaxTrain(models, args.size)
    pt = PeerTrain(models, args.size) if peer and {"train", "loss_share"} & set(which) else None
    step_s: dict[str, float] = {}
    for case in which:
        if case == "infer":
            bench_infer(models, args)
        elif case == "train":
            step_s = bench_train(models, args, jt, pt)
        elif case == "loss_share":
            bench_loss_share(models, args, jt, pt, step_s)
        else:
            bench_parts(models, args)
    emit({"name": "environment_end", "loadavg_1m": loadavg()})


if __name__ == "__main__":
    main()
