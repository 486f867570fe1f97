"""Detection heads: what a detector family owns beyond its network (Model Garden's task heads, torchvision's
`RetinaNetHead.compute_loss`): target assignment, the loss, and decoding to fixed-shape detections.

`config.head` names a registered `DetectionHead`; `jaxcv/detectors/NAME.py` is imported on first use, so a
new detector is one file here (its head, usually its model too), one config and a test, with no edit to the
trainer or the detection task. The head also states its own config sections and defaults
(`DetectionHead.default_config`) and checks them (`validate`).
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import ml_collections

from jaxcv.registry import Registry

# name -> DetectionHead subclass.
HEADS = Registry("detection head")

Array = jax.Array


class DetectionHead:
    """Owns a detector's assignment, loss and decoding. Built once per run by the detection task.

    `config`: the whole run config (the head reads its own sections, e.g. `anchors`, `loss`,
    `postprocess`); `image_hw`: the (fixed) network input size; `num_classes`: the model's class count.
    """

    name = ""

    def __init__(self, config: ml_collections.ConfigDict, image_hw: tuple[int, int], num_classes: int):
        self.config = config
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.num_classes = int(num_classes)

    @classmethod
    def default_config(cls, preset: str = "") -> dict[str, ml_collections.ConfigDict]:
        """The config sections this head reads, with their defaults: {section name: ConfigDict}."""
        return {}

    def validate(self) -> None:
        """Checks the head's config sections before anything compiles (ValueError naming the key)."""

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs the model needs from the head (e.g. anchors per location)."""
        return {}

    def loss(self, outputs: dict[str, Any], boxes: Array, labels: Array, mask: Array
             ) -> tuple[Array, dict[str, Array]]:
        """Scalar loss and its named terms. boxes: [B, G, 4] xyxy input pixels; labels: [B, G] int (model
        classes); mask: [B, G] bool (real boxes; the rest is padding). Runs inside jit."""
        raise NotImplementedError

    def decode(self, outputs: dict[str, Any]) -> dict[str, Array]:
        """Fixed-shape detections: boxes [B, D, 4] xyxy input pixels, scores [B, D], labels [B, D] int32,
        valid [B, D] bool. Runs inside jit."""
        raise NotImplementedError


def head_class(name: str) -> type[DetectionHead]:
    """The head registered as `name`, importing `jaxcv.detectors.NAME` first if needed."""
    if name not in HEADS:
        try:
            importlib.import_module(f"jaxcv.detectors.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"jaxcv.detectors.{name}":
                raise
    return HEADS.get(name)


def create_head(config: ml_collections.ConfigDict, image_hw: tuple[int, int], num_classes: int) -> DetectionHead:
    return head_class(config.head)(config, image_hw, num_classes)
