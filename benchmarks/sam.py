"""Segment Anything: jaxcv against segment_anything (torch) in the same run, when it is installed.

    python benchmarks/sam.py [--only=encoder_reduced,encoder_vit_b,decoder,amg] [--dtypes float32,bfloat16]
                             [--warmup 1] [--repeats 2] [--prompts 64] [--points_per_side 16] [--no-peer]

One JSON line per measurement: `median_s`, `min_s`, `max_s` over `--repeats` timed calls after `--warmup`
untimed ones (jaxcv's first call, which compiles, is timed apart as `compile_s`). With segment_anything and torch
importable (`pip install segment-anything`, optional), both models are built from one random state dict
(segment_anything's own `_build_sam(..., checkpoint=None)` after `torch.manual_seed(0)`, loaded into jaxcv with
`jaxcv.interop.from_segment_anything`), the timed calls alternate (jaxcv, peer, jaxcv, ...) so both see the same
load, and a `ratio` line (jaxcv median / peer median, < 1: jaxcv faster) follows each pair. Without the peer,
jaxcv runs on its own random init. bfloat16: jaxcv computes in bfloat16 (float32 parameters), the peer under
`torch.autocast("cpu", dtype=torch.bfloat16)`.

Cases:
- encoder_reduced: the image encoder of the reference fixture's SAM (width 192, depth 4, 3 heads, global blocks
  1 and 3; everything else as ViT-B), one 1024 x 1024 image.
- encoder_vit_b: ViT-B's image encoder (768, 12, 12, [2, 5, 8, 11]), one 1024 x 1024 image.
- decoder: `--prompts` box prompts on one image in one call, masks post-processed to the original size
  (jaxcv `Predictor.predict_batch`, peer `SamPredictor.predict_torch`), as prompts/s; reduced model, float32.
- amg: the automatic mask generator on one 471 x 640 image (`--points_per_side`^2 points, batches of 64, the
  reference's other defaults), encoder included; reduced model, float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from timing import alternate, emit, loadavg, parse_cases, stats

from jaxcv import runtime
from jaxcv.interop import from_segment_anything
from jaxcv.models.sam.sam import SAM_CONFIGS, Sam, sam

REDUCED = (192, 4, 3, (1, 3))
ARCHS = {"encoder_reduced": REDUCED, "encoder_vit_b": SAM_CONFIGS["sam_vit_b"]}
CASES = ("encoder_reduced", "encoder_vit_b", "decoder", "amg")


def test_image(h: int = 471, w: int = 640) -> np.ndarray:
    """uint8 [h, w, 3]: a smooth background and five shaded ellipses (as the reference fixture's image)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([60 + 80 * xx / w, 90 + 60 * yy / h, 120 + 0 * xx], -1)
    for _ in range(5):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(30, 90), rng.uniform(30, 90)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[inside] = rng.uniform(0, 255, 3) * (0.8 + 0.2 * (yy[inside, None] - cy) / ry)
    return np.clip(img, 0, 255).astype(np.uint8)


class Models:
    """The jaxcv SAM (and, with the peer, segment_anything's) of one architecture, from one random init."""

    def __init__(self, arch: tuple[int, int, int, tuple[int, ...]], peer: bool):
        self.arch = arch
        self.torch = None
        if peer:
            import torch
            from segment_anything.build_sam import _build_sam

            torch.manual_seed(0)
            self.torch = _build_sam(arch[0], arch[1], arch[2], list(arch[3]), checkpoint=None).eval()
            self.state_dict = {k: v.detach().numpy() for k, v in self.torch.state_dict().items()}
        self._jax: dict[str, tuple[Sam, Any]] = {}

    def jaxcv(self, dtype: str) -> tuple[Sam, Any]:
        if dtype not in self._jax:
            if self.torch is not None:
                e, d, h, g = self.arch
                self._jax[dtype] = from_segment_anything(
                    self.state_dict, encoder_embed_dim=e, encoder_depth=d, encoder_num_heads=h,
                    encoder_global_attn_indexes=list(g), dtype=jnp.dtype(dtype))
            else:
                self._jax[dtype] = jaxcv_init(sam(*self.arch, dtype=jnp.dtype(dtype)))
        return self._jax[dtype]


def jaxcv_init(module: Sam) -> tuple[Sam, Any]:
    """jaxcv's own random init of every variable (no peer to copy from)."""
    s, m = module.image_size, 4 * module.embedding_size

    def everything(mdl: Sam) -> Any:  # both dense-prompt paths, as `init_variables`
        mdl.encode_prompts(boxes=jnp.zeros((1, 4)))
        return mdl(jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 4)),
                   jnp.zeros((1, m, m, 1)))

    return module, jax.jit(lambda k: module.init(k, method=everything))(jax.random.key(0))


def bench_encoder(name: str, models: Models, dtypes: list[str], args: argparse.Namespace) -> None:
    x = np.random.default_rng(0).standard_normal((1, 1024, 1024, 3)).astype(np.float32)
    xj = jnp.asarray(x)
    xt = None
    if models.torch is not None:
        import torch

        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    for dtype in dtypes:
        module, variables = models.jaxcv(dtype)
        fn = jax.jit(lambda v, x, m=module: m.apply(v, x, method=Sam.embed_image))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(variables, xj))
        compile_s = time.perf_counter() - t0
        fns = {"jaxcv": lambda fn=fn, v=variables: jax.block_until_ready(fn(v, xj))}
        if models.torch is not None:
            def peer(dtype: str = dtype) -> Any:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                            enabled=dtype == "bfloat16"):
                    return models.torch.image_encoder(xt)

            fns["segment_anything"] = peer
        times = alternate(fns, args.warmup, args.repeats)
        record = {"name": name, "dtype": dtype, "image": 1024, "encoder": list(models.arch[:3]), "load": loadavg()}
        emit({**record, "impl": "jaxcv", "compile_s": round(compile_s, 2), **stats(times["jaxcv"])})
        if "segment_anything" in times:
            emit({**record, "impl": "segment_anything", **stats(times["segment_anything"])})
            emit({"name": f"{name}_ratio", "dtype": dtype,
                  "ratio": round(statistics.median(times["jaxcv"]) / statistics.median(times["segment_anything"]),
                                 3)})


def bench_decoder(models: Models, args: argparse.Namespace) -> None:
    from jaxcv.sam import Predictor

    image = test_image()
    h, w = image.shape[:2]
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1, (args.prompts, 2)) * [w - 60, h - 60]
    boxes = np.concatenate([xy, xy + rng.uniform(20, 60, (args.prompts, 2))], 1).astype(np.float32)
    predictor = Predictor(*models.jaxcv("float32"))
    predictor.set_image(image)
    t0 = time.perf_counter()
    jax.block_until_ready(predictor.predict_batch(boxes=boxes, multimask_output=True))
    compile_s = time.perf_counter() - t0
    fns = {"jaxcv": lambda: jax.block_until_ready(predictor.predict_batch(boxes=boxes, multimask_output=True))}
    if models.torch is not None:
        import torch
        from segment_anything import SamPredictor

        peer = SamPredictor(models.torch)
        peer.set_image(image)
        tboxes = torch.from_numpy(peer.transform.apply_boxes(boxes, (h, w)).astype(np.float32))

        def run_peer() -> Any:
            with torch.inference_mode():
                return peer.predict_torch(None, None, boxes=tboxes, multimask_output=True)

        fns["segment_anything"] = run_peer
    times = alternate(fns, args.warmup, max(args.repeats, 3))
    record = {"name": "decoder", "prompts": args.prompts, "image": [h, w], "multimask": True, "load": loadavg()}
    for impl, t in times.items():
        extra = {"compile_s": round(compile_s, 2)} if impl == "jaxcv" else {}
        emit({**record, "impl": impl, **extra, **stats(t),
              "prompts_per_s": round(args.prompts / statistics.median(t), 1)})
    if "segment_anything" in times:
        emit({"name": "decoder_ratio", "ratio": round(statistics.median(times["jaxcv"])
                                                      / statistics.median(times["segment_anything"]), 3)})


def bench_amg(models: Models, args: argparse.Namespace) -> None:
    from jaxcv.sam import AutomaticMaskGenerator

    image = test_image()
    settings = {"points_per_side": args.points_per_side, "points_per_batch": 64}
    gen = AutomaticMaskGenerator(*models.jaxcv("float32"), **settings)
    t0 = time.perf_counter()
    n_ours = len(gen.generate(image))
    first_s = time.perf_counter() - t0
    fns = {"jaxcv": lambda: gen.generate(image)}
    n_peer = None
    if models.torch is not None:
        import torch
        from segment_anything import SamAutomaticMaskGenerator

        peer = SamAutomaticMaskGenerator(models.torch, **settings)

        def run_peer() -> Any:
            with torch.inference_mode():
                return peer.generate(image)

        n_peer = len(run_peer())
        fns["segment_anything"] = run_peer
    times = alternate(fns, 0, max(args.repeats, 3))
    record = {"name": "amg", "image": list(image.shape[:2]), **settings, "load": loadavg()}
    emit({**record, "impl": "jaxcv", "first_call_s": round(first_s, 2), "masks": n_ours, **stats(times["jaxcv"])})
    if n_peer is not None:
        emit({**record, "impl": "segment_anything", "masks": n_peer, **stats(times["segment_anything"])})
        emit({"name": "amg_ratio", "ratio": round(statistics.median(times["jaxcv"])
                                                  / statistics.median(times["segment_anything"]), 3)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--points_per_side", type=int, default=16)
    ap.add_argument("--no-peer", action="store_true", help="skip segment_anything even if importable")
    args = ap.parse_args()
    which = parse_cases(ap, args.only, CASES)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if set(dtypes) - {"float32", "bfloat16"}:
        ap.error(f"--dtypes: float32 and/or bfloat16, got {args.dtypes!r}")
    runtime.configure()
    peer = not args.no_peer
    env: dict[str, Any] = {"name": "environment", "jax": jax.__version__, "backend": jax.default_backend(),
                           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                           "loadavg_1m": loadavg()}
    if peer:
        try:
            import segment_anything  # noqa: F401
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            env.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        except ImportError as e:
            peer = False
            env["peer_skipped"] = f"segment_anything/torch not importable: {e}"
    emit(env)
    reduced = Models(REDUCED, peer) if set(which) & {"encoder_reduced", "decoder", "amg"} else None
    for case in which:
        if case.startswith("encoder"):
            models = reduced if case == "encoder_reduced" else Models(ARCHS[case], peer)
            bench_encoder(case, models, dtypes, args)
        elif case == "decoder":
            bench_decoder(reduced, args)
        else:
            bench_amg(reduced, args)
    emit({"name": "environment_end", "loadavg_1m": loadavg()})


if __name__ == "__main__":
    main()
