"""jaxcv: JAX/Flax computer vision for research (classification, detection, segmentation)."""

from jaxcv import runtime as _runtime

__version__ = "0.1.0"

_runtime.configure()  # XLA:CPU fusion flags and allocator settings, before JAX starts a backend
