"""Evaluators chosen by the config (`config.evals`, big_vision style): COCO and VOC on one detection run."""

import numpy as np
import pytest

from jaxcv.config import load_config_file
from jaxcv.tasks import create_task
from jaxcv.tasks.base import EVALUATORS, MultiEvaluator


def _task(evals: dict):
    config = load_config_file("configs/shapes_retinanet.py:smoke")
    with config.unlocked():
        config.evals = evals
    return create_task(config)


def _feed(evaluator, task, jitter: float) -> None:
    """Feeds the validation split's own boxes as detections (score 0.9), each moved by `jitter` px."""
    src = task.source("validation")
    cat_to_label = {int(c): k for k, c in enumerate(task.class_space("validation")[0])}
    gt = src.coco_ground_truth()
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"]]
        d = 4
        boxes = np.zeros((1, d, 4), np.float32)
        labels = np.zeros((1, d), np.int32)
        valid = np.zeros((1, d), bool)
        for j, a in enumerate(anns[:d]):
            x, y, w, h = a["bbox"]
            boxes[0, j] = [x + jitter, y, x + w + jitter, y + h]
            labels[0, j], valid[0, j] = cat_to_label[a["category_id"]], True
        batch = {"valid": np.ones(1, bool), "image_id": np.asarray([im["id"]]), "scale": np.ones(1),
                 "orig_size": np.asarray([[im["height"], im["width"]]]), "image": np.zeros((1, 8, 8, 3), np.uint8)}
        evaluator.update(batch, {"boxes": boxes, "scores": np.full((1, d), 0.9, np.float32), "labels": labels,
                                 "valid": valid})


def test_coco_and_voc_together_from_the_config():
    task = _task({"coco": {"type": "coco"}, "voc07": {"type": "voc", "use_07_metric": True},
                  "voc12": {"type": "voc", "use_07_metric": False}})
    evaluator = task.evaluator()
    assert isinstance(evaluator, MultiEvaluator) and sorted(evaluator.evaluators) == ["coco", "voc07", "voc12"]
    with pytest.raises(ValueError, match="already reported"):  # voc07 and voc12 differ; a duplicate clashes
        clash = _task({"a": {"type": "voc"}, "b": {"type": "voc"}}).evaluator()
        _feed(clash, task, 0.0)
        clash.result()
    _feed(evaluator, task, 0.0)
    m = evaluator.result()
    # Up to 4 objects per image are detected exactly: VOC recall is the share of boxes found, precision 1.
    n_gt = len(task.source("validation").coco_ground_truth()["annotations"])
    assert n_gt > 0 and {"AP", "AP50", "VOC07_mAP", "VOC_mAP"} <= set(m)
    assert m["AP50"] > 0.5 and m["VOC_mAP"] > 0.5 and m["VOC07_mAP"] > 0.5
    moved = _task({"voc": {"type": "voc", "use_07_metric": False}}).evaluator()
    _feed(moved, task, 1000.0)  # every box off the image: nothing matches
    assert moved.result()["VOC_mAP"] == 0.0


def test_unknown_evaluator_names_the_key():
    task = _task({"mine": {"type": "nope"}})
    with pytest.raises(ValueError, match=r"config.evals.mine.type='nope'.*known: .*coco.*voc"):
        task.evaluator()
    assert {"coco", "voc", "classification", "segmentation", "localization"} <= set(EVALUATORS.names())
