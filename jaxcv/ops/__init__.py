"""Detection ops: box geometry, anchors, matching, NMS and post-processing (torchvision-exact)."""

from jaxcv.ops.anchors import AnchorConfig, feature_sizes, generate_anchors, grid_anchors
from jaxcv.ops.boxes import (
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    generalized_box_iou,
    xyxy_to_cxcywh,
)
from jaxcv.ops.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, detection_targets, match_anchors
from jaxcv.ops.nms import batched_nms, nms
from jaxcv.ops.postprocess import retinanet_postprocess

__all__ = [
    "AnchorConfig",
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "detection_targets",
    "feature_sizes",
    "generalized_box_iou",
    "generate_anchors",
    "grid_anchors",
    "match_anchors",
    "nms",
    "retinanet_postprocess",
    "xyxy_to_cxcywh",
]
