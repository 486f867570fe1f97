"""YOLOv3-tiny (the public darknet cfg, 3 classes) from scratch on the built-in synthetic shapes (no download).

The `yolov3` head (jaxcv/detectors/yolov3.py): darknet's assignment and loss, darknet's decoding with class-wise
NMS, evaluated with COCO metrics. The scenes are those of configs/shapes_retinanet.py (2-8 objects 24-64 px
across in 128 px images, none hidden beyond recognition); at 128 px the two [yolo] grids are 4x4 (stride 32) and
8x8 (stride 16). The anchors are a k-means (1 - IoU distance, as YOLOv2's dimension clusters) of the training
boxes' sizes, smallest three on the stride-16 grid as in the cfg's masks. Trains from scratch on a 2-core CPU in
minutes and reports COCO metrics on the held-out split.

    python -m jaxcv.main --config=configs/shapes_yolov3_tiny.py --workdir=runs/shapes_yolov3_tiny
    python -m jaxcv.main --config=configs/shapes_yolov3_tiny.py:smoke --workdir=/tmp/yolo_smoke
"""

from jaxcv.config import cpu_recipe, detection_config, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="yolov3")
    c.model.cfg = "yolov3-tiny"
    c.model.bn_momentum = 0.9  # from scratch: running statistics that follow the fast-changing weights
    shapes_data(c, min_objects=2, max_objects=8, min_size=24.0, max_size=64.0, min_visible=0.6)
    c.data.max_boxes = 16
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.anchors.sizes = ((23.0, 22.0), (27.0, 28.0), (33.0, 33.0), (40.0, 37.0), (43.0, 45.0), (54.0, 54.0))
    c.anchors.masks = ((3, 4, 5), (0, 1, 2))
    c.batch_size = 8
    c.eval_batch_size = 32
    cpu_recipe(c, steps=3000)
    c.log_every = 50
    c.checkpoint_every = 250
    if "smoke" in args:
        smoke(c, **{"model.width": 0.25, "data.image_size": 64})
    c.lock()
    return c
