"""SSD-style grid detector (fastai course part 2, "pascal-multi") on the synthetic shapes.

A ResNet-18 from scratch, one feature map (C5) pooled onto square grids of cells; each cell has 9
anchors (zooms 0.75/1/1.3 x ratios 1/2/0.5, `jaxcv.ops.anchors.grid_anchors`). Matching, the box
coder, the L1 box loss and post-processing are RetinaNet's (the `ssd` head, jaxcv/detectors/ssd.py); the
classification loss is focal or plain BCE (`--config.loss.classification=bce`).
The course uses 4x4/2x2/1x1 grids on 224 px images of large objects; the shapes are small (8-64 px in
128 px images), so an 8x8 grid (16 px cells) is added. Evaluated with COCO metrics.

    python -m jaxcv.main --config=configs/shapes_ssd.py --workdir=runs/shapes_ssd
    python -m jaxcv.main --config=configs/shapes_ssd.py:smoke --workdir=/tmp/ssd_smoke
"""

import ml_collections

from jaxcv.config import cpu_recipe, detection_config, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="ssd")
    c.model = ml_collections.ConfigDict(
        {"name": "ssd_grid", "backbone": "resnet18", "channels": 256, "dropout_rate": 0.0,
         "freeze_backbone_bn": False}  # from scratch: BatchNorm statistics must be learned
    )
    c.anchors.grid_sizes = (8, 4, 2, 1)
    c.anchors.zooms = (0.75, 1.0, 1.3)
    c.anchors.ratios = (1.0, 2.0, 0.5)
    c.loss.classification = "focal"
    shapes_data(c)
    c.data.max_boxes = 16
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.batch_size = 16
    c.eval_batch_size = 32
    cpu_recipe(c, steps=1500)
    c.log_every = 50
    c.checkpoint_every = 250
    if "smoke" in args:
        smoke(c, **{"model.channels": 32, "anchors.grid_sizes": (4, 2, 1), "data.image_size": 64})
    c.lock()
    return c
