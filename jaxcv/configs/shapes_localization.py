"""Largest-object localization on the synthetic shapes (the fastai course's first detection exercise).

A ResNet-18 from scratch, its last feature map flattened (`model.pool="avg"`: global pooling), a box
head (sigmoid cx, cy, w, h relative to the image, L1 loss) and a class head (cross-entropy), trained on
the largest shape of each image. Metrics: class accuracy, mean IoU with the largest gt box, accuracy at
IoU >= 0.5 (see jaxcv/tasks/localization.py). From scratch, telling the shapes apart takes long: class
accuracy stayed near chance for the first ~1000 steps in short CPU runs while the box IoU climbed.

    python -m jaxcv.main --config=configs/shapes_localization.py --workdir=runs/shapes_localization
    python -m jaxcv.main --config=configs/shapes_localization.py:smoke --workdir=/tmp/loc_smoke
"""

import ml_collections

from jaxcv.config import base_config, cpu_recipe, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = base_config()
    c.task = "localization"
    # pool="flatten" (the course's head) rather than global average pooling, which throws away where the
    # object is (its box loss stays flat; the A/B is in benchmarks/README.md).
    c.model = ml_collections.ConfigDict(
        {"name": "localizer", "backbone": "resnet18", "pool": "flatten", "hidden": 256, "dropout_rate": 0.25,
         "box_format": "cxcywh"}
    )
    shapes_data(c, max_objects=3)
    c.data.augment = ml_collections.ConfigDict({"hflip": True})
    c.loss = ml_collections.ConfigDict({"cls_weight": 1.0, "box_weight": 5.0})
    c.batch_size = 32
    c.eval_batch_size = 64
    c.log_every = 50
    c.checkpoint_every = 500
    c.evals = ml_collections.ConfigDict({"localization": {"type": "localization"}})
    c.checkpoint.best_metric = "mean_iou"
    cpu_recipe(c, steps=1500)
    if "smoke" in args:
        smoke(c, **{"data.image_size": 64})
    c.lock()
    return c
