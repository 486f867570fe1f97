"""YOLOv3-tiny on your own data: a COCO-format JSON file plus an image folder, for train and val.

The public darknet cfg with its own anchors (for 416 px inputs) and the `yolov3` head (jaxcv/detectors/yolov3.py),
from scratch; another cfg with `--config.model.cfg=PATH` (its [yolo] anchors and masks are used unless
`config.anchors` sets them).

    python -m jaxcv.main --config=configs/coco_json_yolov3_tiny.py --workdir=runs/mine_yolo \
      --config.data.train_json=ann/train.json --config.data.train_images=images/train \
      --config.data.val_json=ann/val.json --config.data.val_images=images/val
"""

from jaxcv.config import detection_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="yolov3")
    c.model.cfg = "yolov3-tiny"
    c.data.name = "coco_json"
    c.data.train_json = ""
    c.data.train_images = ""
    c.data.val_json = ""
    c.data.val_images = ""
    c.data.image_size = 416
    c.data.max_boxes = 100
    c.data.augment.scale_jitter = (0.75, 1.25)
    c.data.augment.photometric = True  # darknet's hue / saturation / exposure jitter, roughly
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 20000
    c.eval_every = 2000
    c.checkpoint_every = 1000
    c.optimizer.update({"name": "adamw", "learning_rate": 1e-3, "weight_decay": 5e-4, "clip_grad_norm": 10.0})
    c.schedule.update({"name": "warmup_cosine", "warmup_steps": 1000})  # darknet's burn_in
    if "smoke" in args:
        c.model.width = 0.25
        c.data.image_size = 64
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
    c.lock()
    return c
