"""Process-wide CPU settings, opt-in: `configure()` applies them. jaxcv's entry points call it first
(`python -m jaxcv.main` / `jaxcv-train`, `jaxcv.show`, `jaxcv.explain`, `jaxcv.sweep`, `jaxcv.convert`,
`jaxcv.sam`, and `benchmarks/`); `import jaxcv` alone changes nothing, as a library should not (big_vision sets
its flags in its trainer). In a notebook, call `jaxcv.runtime.configure()` before the first JAX computation.
`JAXCV_CPU_TUNING=0` turns it off everywhere.

Why (the measurements are in benchmarks/README.md, "Where the time went"):

- **XLA:CPU library fusions.** `--xla_cpu_experimental_ynn_fusion_type=individual_dot,dot,eltwise,reduce`
  lets XLA hand dots together with their element-wise producers/consumers, element-wise chains and
  reductions (BatchNorm statistics and their gradients) to YNNPACK. jaxlib 0.10's default
  (`individual_dot,reduce`) leaves BatchNorm's backward to loop fusions that transpose the gradient for the
  next dot. Added to `XLA_FLAGS` unless that flag is already there, and only for jaxlib >= 0.10 (older
  ones do not know it and would abort on an unknown flag). It must be set before JAX creates its CPU
  backend, so import jaxcv before running any JAX computation. Not under `JAX_ENABLE_X64=1` (the
  float64 numerics checks): with these fusions the float64 losses of 8 and 1 devices no longer agree
  to float64 round-off (tests/test_train.py::test_eight_devices_equal_one).
- **The allocator.** XLA allocates each step's buffers (GBs for a detector) anew; glibc serves large
  blocks with fresh `mmap`s, or from per-thread arenas that it unmaps when they empty, so every step
  page-faults its whole working set in again. `mallopt` with
  one arena, no `mmap` for large blocks and no trimming keeps freed memory for the next step: zero
  faults per step, at the price of the process keeping its peak memory (as tcmalloc or jemalloc would).
"""

from __future__ import annotations

import ctypes
import os
import platform
from importlib import metadata


def use_compilation_cache() -> None:
    """The persistent XLA compilation cache of the command-line tools (`JAXCV_COMPILATION_CACHE`, default
    ~/.cache/jaxcv/xla), so repeated commands skip compiling."""
    import jax

    cache = os.environ.get("JAXCV_COMPILATION_CACHE", os.path.expanduser("~/.cache/jaxcv/xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def start_cli(argv: list[str]) -> None:
    """What the absl command-line tools (`jaxcv.show`, `jaxcv.explain`) do first: refuse stray arguments,
    quiet orbax/absl INFO lines unless a verbosity flag is given, and use the compilation cache."""
    import sys

    from absl import app, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    configure()
    if not any(a.startswith(("-v", "--v", "--verbosity")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)  # orbax INFO lines would drown the output
    use_compilation_cache()


YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSIONS = "individual_dot,dot,eltwise,reduce"
# jaxlib >= 0.12: without `eltwise`. There, YNNPACK's element-wise fusions make XLA's own bfloat16 convolutions
# (conv_impl="xla") return non-finite values from the second conv on (a ResNet-18 in bfloat16; float32 is
# unaffected, and jaxlib 0.10 is fine); tests/test_resnet.py::test_bfloat16_compute_keeps_float32_params_and_logits.
YNN_FUSIONS_0_12 = "individual_dot,dot,reduce"


def ynn_fusions() -> str:
    """The fusion list for the installed jaxlib (see YNN_FUSIONS_0_12)."""
    return YNN_FUSIONS_0_12 if _jaxlib_at_least(0, 12) else YNN_FUSIONS
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

applied: dict[str, str] = {}  # what configure() set, for logs and benchmarks


def _jaxlib_at_least(major: int, minor: int) -> bool:
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return False
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return len(parts) == 2 and tuple(parts) >= (major, minor)


def configure() -> dict[str, str]:
    """Applies the settings above once per process; returns what was applied."""
    if applied or os.environ.get("JAXCV_CPU_TUNING", "1") == "0":
        return applied
    flags = os.environ.get("XLA_FLAGS", "")
    x64 = os.environ.get("JAX_ENABLE_X64", "0").lower() in ("1", "true")
    if YNN_FLAG not in flags and not x64 and _jaxlib_at_least(0, 10):
        fusions = ynn_fusions()
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={fusions}".strip()
        applied["xla_flags"] = f"{YNN_FLAG}={fusions}"
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
        if libc is not None:
            ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                                              (_M_TRIM_THRESHOLD, -1)))  # -1: never trim
            if ok:
                applied["malloc"] = "glibc: 1 arena, no mmap, no trim"
    return applied
