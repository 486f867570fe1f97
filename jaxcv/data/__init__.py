"""Datasets (random-access sources), transforms and the batch loader. See `jaxcv.data.base`."""

from jaxcv.registry import Registry

# name -> callable(data_config: ConfigDict, split: str) -> Source
DATASETS = Registry("dataset")

# Source modules register themselves on import.
from jaxcv.data import classification, coco_json, detection, segmentation, shapes, tfds_detection  # noqa: E402,F401,I001
