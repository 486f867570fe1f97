"""SSD-style grid detector (fastai course part 2, "pascal-multi") on the synthetic shapes.

A ResNet-18 from scratch, one feature map (C5) pooled onto square grids of cells; each cell has 9
anchors (zooms 0.75/1/1.3 x ratios 1/2/0.5, `jaxcv.ops.anchors.grid_anchors`). Matching, the box
coder, the L1 box loss and post-processing are RetinaNet's (jaxcv/tasks/detection.py with
anchors.kind="grid"); the classification loss is focal or plain BCE (`--config.loss.classification=bce`).
The course uses 4x4/2x2/1x1 grids on 224 px images of large objects; the shapes are small (8-64 px in
128 px images), so an 8x8 grid (16 px cells) is added. Evaluated with COCO metrics.

    python -m jaxcv.main --config=configs/shapes_ssd.py --workdir=runs/shapes_ssd
    python -m jaxcv.main --config=configs/shapes_ssd.py:smoke --workdir=/tmp/ssd_smoke
"""

from jaxcv.config import detection_config


def get_config(arg: str | None = None):
    c = detection_config("torchvision")
    c.model.name = "ssd_grid"
    c.model.backbone = "resnet18"
    c.model.channels = 256
    c.model.dropout_rate = 0.0
    c.model.freeze_backbone_bn = False  # from scratch: BatchNorm statistics must be learned
    for key in ("fpn_channels", "head_norm", "p6_from"):  # RetinaNet-only model arguments
        del c.model[key]
    c.anchors.kind = "grid"
    c.anchors.grid_sizes = (8, 4, 2, 1)
    c.anchors.zooms = (0.75, 1.0, 1.3)
    c.anchors.ratios = (1.0, 2.0, 0.5)
    c.loss.classification = "focal"
    c.data.name = "shapes"
    c.data.image_size = 128
    c.data.max_boxes = 16
    c.data.num_train = 4096
    c.data.num_val = 256
    c.data.min_objects = 1
    c.data.max_objects = 5
    c.data.shape_classes = 3
    c.data.seed = 0
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 1500
    c.log_every = 50
    c.checkpoint_every = 250
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_grad_norm = 10.0
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 100
    if arg == "smoke":
        c.model.channels = 32
        c.anchors.grid_sizes = (4, 2, 1)
        c.data.image_size = 64
        c.data.num_train = 64
        c.data.num_val = 16
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_train_steps = 4
        c.log_every = 2
        c.checkpoint_every = 2
        c.schedule.warmup_steps = 1
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    c.lock()
    return c
