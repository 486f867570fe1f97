"""jaxcv: JAX/Flax computer vision for research (classification, detection, segmentation)."""

__version__ = "0.1.0"

# Importing jaxcv changes nothing process-wide: the command-line entry points apply `jaxcv.runtime`'s XLA:CPU
# flags and allocator settings; notebooks and libraries opt in with `jaxcv.runtime.configure()`.
