"""YOLOv8n (ultralytics' yolov8n.yaml, 3 classes) from scratch on the built-in synthetic shapes (no download).

The `yolov8` head (jaxcv/detectors/yolov8.py): the task-aligned assigner, ultralytics' v8 loss (CIoU + DFL + BCE,
gains 7.5 / 0.5 / 1.5) and its validation NMS (conf 0.001, IoU 0.7, 300 detections, multi-label), evaluated with
COCO metrics. The scenes are those of configs/shapes_retinanet.py (2-8 objects 24-64 px across in 128 px images,
none hidden beyond recognition); at 128 px the anchor-point grids are 16x16, 8x8 and 4x4 (strides 8, 16, 32).
The optimizer is the CPU configs' AdamW recipe rather than ultralytics' SGD (configs/coco_yolov8n.py): AdamW is
what ultralytics itself picks for short runs (`optimizer=auto` under 10k iterations), and it learns from scratch
in the few hundred steps a CPU affords. Weights are averaged as ultralytics' ModelEMA (its ramp with tau), with
a decay of 0.99 instead of its 0.9999: an average over about the last 100 steps, where 0.9999 would keep the
weights of the run's first few hundred steps.

    python -m jaxcv.main --config=configs/shapes_yolov8n.py --workdir=runs/shapes_yolov8n
    python -m jaxcv.main --config=configs/shapes_yolov8n.py:smoke --workdir=/tmp/yolov8_smoke
"""

import ml_collections

from jaxcv.config import cpu_recipe, detection_config, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="yolov8")
    c.model = ml_collections.ConfigDict({"name": "yolov8", "scale": "n", "reg_max": 16})
    shapes_data(c, min_objects=2, max_objects=8, min_size=24.0, max_size=64.0, min_visible=0.6)
    c.data.max_boxes = 16
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.batch_size = 8
    c.eval_batch_size = 32
    cpu_recipe(c, steps=2500)
    c.optimizer.weight_decay = 5e-4  # ultralytics' default
    c.ema_decay = 0.99  # an average over about the last 100 steps
    c.ema_tau = 100.0
    c.log_every = 50
    c.checkpoint_every = 500
    if "smoke" in args:
        smoke(c, **{"data.image_size": 64, "ema_decay": 0.0})
    c.lock()
    return c
