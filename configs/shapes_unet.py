"""U-Net (ResNet-18 encoder) semantic segmentation of the built-in synthetic shapes (no download).

    python -m jaxcv.main --config=configs/shapes_unet.py --workdir=runs/shapes_unet
"""

from jaxcv.config import segmentation_config


def get_config(arg: str | None = None):
    c = segmentation_config()
    c.model.name = "unet_resnet18"
    c.model.decoder_channels = (128, 64, 32, 16, 16)
    c.data.name = "shapes_segmentation"
    c.data.image_size = 64
    c.data.num_train = 2048
    c.data.num_val = 128
    c.data.min_objects = 1
    c.data.max_objects = 4
    c.data.shape_classes = 3
    c.data.min_size = 12.0  # object diameters 12-32 px: a 6 px "star" and "square" look alike
    c.data.max_size = 32.0
    c.data.seed = 0
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 600
    c.log_every = 50
    c.checkpoint_every = 200
    c.schedule.warmup_steps = 30
    if arg == "smoke":
        c.model.decoder_channels = (32, 16, 16, 8, 8)
        c.data.num_train = 32
        c.data.num_val = 8
        c.batch_size = 4
        c.eval_batch_size = 4
        c.num_train_steps = 4
        c.log_every = 2
        c.checkpoint_every = 2
    c.lock()
    return c
