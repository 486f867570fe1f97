"""U-Net (ResNet-18 encoder) semantic segmentation of the built-in synthetic shapes (no download).

    python -m jaxcv.main --config=configs/shapes_unet.py --workdir=runs/shapes_unet
"""

from jaxcv.config import parse_config_arg, segmentation_config, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = segmentation_config()
    c.model.name = "unet_resnet18"
    c.model.decoder_channels = (128, 64, 32, 16, 16)
    # Objects 12-32 px across: a 6 px "star" and "square" look alike.
    shapes_data(c, segmentation=True, image_size=64, num_train=2048, num_val=128, max_objects=4, min_size=12.0,
                max_size=32.0)
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 600
    c.log_every = 50
    c.checkpoint_every = 200
    c.schedule.warmup_steps = 30
    if "smoke" in args:
        smoke(c, **{"model.decoder_channels": (32, 16, 16, 8, 8), "data.num_train": 32, "data.num_val": 8,
                    "batch_size": 4, "eval_batch_size": 4, "schedule.warmup_steps": 30})
    c.lock()
    return c
