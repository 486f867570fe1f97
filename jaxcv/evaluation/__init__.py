"""Host-side evaluation: pycocotools-exact COCO boxes, PASCAL VOC mAP, segmentation and classification.

`EVALUATORS` maps a config name to the main entry point of each family:
- "coco": `coco_evaluate(gt_dict, results) -> dict` of the 12 COCO numbers;
- "voc": `voc_evaluate(gt_boxes, gt_labels, gt_difficult, det_boxes, det_scores, det_labels,
  num_classes, ...)`;
- "segmentation": `ConfusionMatrix(num_classes, ignore_index=255, void_class=None)` accumulator;
- "classification": `ClassificationEvaluator(num_classes, multilabel=False)` accumulator.
"""

from jaxcv.evaluation.classification import (
    ClassificationEvaluator,
    average_precision,
    confusion_matrix_np,
    multilabel_f1,
    multilabel_map,
    precision_recall_from_confusion,
    save_confusion_matrix,
    topk_accuracy,
)
from jaxcv.evaluation.coco import (
    STAT_NAMES,
    CocoEvalResult,
    coco_evaluate,
    coco_evaluate_full,
    detections_to_coco_results,
)
from jaxcv.evaluation.segmentation import ConfusionMatrix, confusion_matrix, metrics_from_confusion
from jaxcv.evaluation.voc import voc_ap, voc_evaluate
from jaxcv.registry import Registry

EVALUATORS = Registry("evaluator")
EVALUATORS.register("coco", coco_evaluate)
EVALUATORS.register("voc", voc_evaluate)
EVALUATORS.register("segmentation", ConfusionMatrix)
EVALUATORS.register("classification", ClassificationEvaluator)

__all__ = [
    "EVALUATORS",
    "STAT_NAMES",
    "ClassificationEvaluator",
    "CocoEvalResult",
    "ConfusionMatrix",
    "average_precision",
    "coco_evaluate",
    "coco_evaluate_full",
    "confusion_matrix",
    "confusion_matrix_np",
    "detections_to_coco_results",
    "metrics_from_confusion",
    "multilabel_f1",
    "multilabel_map",
    "precision_recall_from_confusion",
    "save_confusion_matrix",
    "topk_accuracy",
    "voc_ap",
    "voc_evaluate",
]
