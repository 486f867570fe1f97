"""jaxcv: JAX/Flax computer vision for research (classification, detection, segmentation)."""

__version__ = "0.1.0"
