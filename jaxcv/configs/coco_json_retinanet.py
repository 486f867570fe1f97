"""RetinaNet on your own data: a COCO-format JSON file plus an image folder, for train and val.

    python -m jaxcv.main --config=configs/coco_json_retinanet.py --workdir=runs/mine \
      --config.data.train_json=ann/train.json --config.data.train_images=images/train \
      --config.data.val_json=ann/val.json --config.data.val_images=images/val
"""

from jaxcv.config import detection_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config("torchvision")
    c.model.backbone = "resnet50"
    c.data.name = "coco_json"
    c.data.train_json = ""
    c.data.train_images = ""
    c.data.val_json = ""
    c.data.val_images = ""
    c.data.image_size = 512
    c.data.max_boxes = 100
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 20000
    c.eval_every = 2000
    c.checkpoint_every = 1000
    c.optimizer.learning_rate = 0.005
    c.schedule.name = "step"
    c.schedule.warmup_steps = 500
    c.schedule.boundaries = (14000, 18000)
    c.init_prefix = "backbone"
    if "smoke" in args:
        c.model.backbone = "resnet18"
        c.model.fpn_channels = 32
        c.data.image_size = 128
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
    c.lock()
    return c
