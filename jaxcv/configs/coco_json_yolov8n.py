"""YOLOv8n on your own data: a COCO-format JSON file plus an image folder, for train and val.

The `yolov8` head (jaxcv/detectors/yolov8.py) with ultralytics' loss gains, assigner and validation NMS. From
scratch, or fine-tuned from ultralytics weights of the same class count converted with
`python -m jaxcv.convert --arch ultralytics:yolov8n --weights yolov8n.safetensors --out DIR` and
`--config.init_from=DIR`. The optimizer is AdamW with warmup, what ultralytics picks for runs this short
(`optimizer=auto`), with its weight decay and gradient clipping; weights are averaged as its ModelEMA. Inputs
are RGB in [0, 1] with grey 114 padding, what ultralytics' weights expect. Mosaic is off here (its
`--config.data.augment.mosaic=1.0 --config.data.augment.close_mosaic=10` is ultralytics' default pipeline, see
configs/coco_yolov8n.py).

    python -m jaxcv.main --config=configs/coco_json_yolov8n.py --workdir=runs/mine_yolov8 \
      --config.data.train_json=ann/train.json --config.data.train_images=images/train \
      --config.data.val_json=ann/val.json --config.data.val_images=images/val
"""

from jaxcv.config import detection_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="yolov8")
    c.model.scale = "n"
    c.data.name = "coco_json"
    c.data.train_json = ""
    c.data.train_images = ""
    c.data.val_json = ""
    c.data.val_images = ""
    c.data.image_size = 640
    c.data.max_boxes = 100
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.5, 1.5)
    c.data.augment.photometric = True
    c.preprocess.normalize = "unit"  # RGB / 255, as ultralytics
    c.preprocess.pad_value = 114.0  # its letterbox grey
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 20000
    c.eval_every = 2000
    c.checkpoint_every = 1000
    c.optimizer.update({"name": "adamw", "learning_rate": 1e-3, "weight_decay": 5e-4, "clip_grad_norm": 10.0})
    c.schedule.update({"name": "warmup_cosine", "warmup_steps": 1000, "end_factor": 0.01})
    c.ema_decay = 0.9999
    c.ema_tau = 2000.0
    if "smoke" in args:
        c.data.image_size = 64
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
        c.schedule.warmup_steps = 1
    c.lock()
    return c
