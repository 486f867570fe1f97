"""Host-side evaluation: pycocotools-exact COCO boxes, PASCAL VOC mAP, segmentation and classification.

These are the metric computations; the evaluators a config chooses (`config.evals`) wrap them for a task
(`jaxcv.tasks.base.EVALUATORS`: "coco", "voc", "classification", "segmentation", "localization").
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

__all__ = [
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
