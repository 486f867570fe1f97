"""RetinaNet ResNet-18-FPN on the built-in synthetic shapes (no download): the README's main job.

Trains from scratch on this 2-core CPU in minutes and reports COCO metrics on the held-out split.

    python -m jaxcv.main --config=configs/shapes_retinanet.py --workdir=runs/shapes_retinanet

`:mobilenet_v3_fpn` swaps in torchvision's MobileNetV3-Large-FPN (`fasterrcnn_mobilenet_v3_large_fpn`'s
backbone: the stride-32 maps of features.13 and features.16, a max-pool level at stride 64) with its anchors,
sizes 32-512 at every level, 3 aspect ratios (15 per location).
"""

from jaxcv.config import cpu_recipe, detection_config, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, ("smoke", "mobilenet_v3_fpn"))
    c = detection_config("torchvision")
    c.model.backbone = "resnet18"
    c.model.fpn_channels = 64
    c.model.head_norm = True  # GroupNorm heads train well from scratch at small batch
    c.model.freeze_backbone_bn = False  # from scratch: BatchNorm statistics must be learned
    # Busy scenes (more supervision per step) of objects 24-64 px across (every one covered by P3-P5
    # anchors), none hidden beyond recognition.
    shapes_data(c, min_objects=2, max_objects=8, min_size=24.0, max_size=64.0, min_visible=0.6)
    c.data.max_boxes = 16
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.anchors.sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
    c.batch_size = 8
    c.eval_batch_size = 32
    cpu_recipe(c, steps=850)
    c.log_every = 50
    c.checkpoint_every = 250
    if "mobilenet_v3_fpn" in args:
        # bn_momentum 0.9 (torch 0.1, as ResNet's): from scratch the running statistics must keep up
        c.model.update({"backbone": "mobilenet_v3_large", "fpn_levels": ("stage4", "stage5"),
                        "backbone_kwargs": {"stage_outputs": True, "bn_momentum": 0.9}, "extra_blocks": "maxpool"})
        c.anchors.update({"levels": (5, 5, 6), "sizes": (32.0,) * 3, "scales": (1.0, 2.0, 4.0, 8.0, 16.0)})
    if "smoke" in args:
        smoke(c, **{"model.fpn_channels": 32})
    c.lock()
    return c
