"""RetinaNet ResNet-18-FPN on the built-in synthetic shapes (no download): the README's main job.

Trains from scratch on this 2-core CPU in minutes and reports COCO metrics on the held-out split.

    python -m jaxcv.main --config=configs/shapes_retinanet.py --workdir=runs/shapes_retinanet
"""

from jaxcv.config import detection_config


def get_config(arg: str | None = None):
    c = detection_config("torchvision")
    c.model.backbone = "resnet18"
    c.model.fpn_channels = 64
    c.model.head_norm = True  # GroupNorm heads train well from scratch at small batch
    c.model.freeze_backbone_bn = False  # from scratch: BatchNorm statistics must be learned
    c.data.name = "shapes"
    c.data.image_size = 128
    c.data.max_boxes = 16
    c.data.num_train = 4096
    c.data.num_val = 256
    c.data.min_objects = 2  # busy scenes: more objects per image, more supervision per step
    c.data.max_objects = 8
    c.data.min_size = 24.0  # object diameters 24-64 px: every object is covered by P3-P5 anchors
    c.data.max_size = 64.0
    c.data.min_visible = 0.6  # no object hidden beyond recognition
    c.data.shape_classes = 3
    c.data.seed = 0
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.anchors.sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
    c.batch_size = 8
    c.eval_batch_size = 32
    c.num_train_steps = 850  # ~14 minutes on a 2-core CPU, compile and evaluation included
    c.log_every = 50
    c.checkpoint_every = 250
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_grad_norm = 10.0
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 100
    if arg == "smoke":
        c.model.fpn_channels = 32
        c.data.num_train = 64
        c.data.num_val = 16
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_train_steps = 4
        c.log_every = 2
        c.checkpoint_every = 2
        c.schedule.warmup_steps = 1
    c.lock()
    return c
