"""U-Net (ResNet-34 encoder) on your own masks in the CamVid layout:

    DATA/codes.txt            one class name per line (line i = class id i)
    DATA/images/NAME.png      images (jpg/png)
    DATA/labels/NAME_P.png    class-id masks (data.label_pattern, default "{stem}_P.png")
    DATA/valid.txt            names of the validation images (the rest is training)

    python -m jaxcv.main --config=configs/mask_folder_unet.py --workdir=runs/camvid \
      --config.data.train_dir=DATA --config.data.valid_list=valid.txt --config.data.void_class=Void

or per-split folders: `--config.data.train_dir=DATA/train --config.data.val_dir=DATA/val`, each with
images/ and labels/ (and codes.txt in the folder or its parent).
"""

from ml_collections.config_dict import placeholder

from jaxcv.config import parse_config_arg, segmentation_config


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = segmentation_config()
    c.model.name = "unet_resnet34"
    c.data.name = "mask_folder"
    c.data.train_dir = placeholder(str)
    c.data.val_dir = placeholder(str)
    c.data.valid_list = placeholder(str)
    c.data.codes_file = "codes.txt"
    c.data.label_pattern = "{stem}_P.png"
    c.data.void_class = placeholder(str)  # e.g. "Void": mapped to the ignore index
    c.data.mask_mismatch = "fail"  # or "resize" (nearest) when a mask's size differs from its image
    c.data.image_size = 256
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 4000
    c.eval_every = 1000
    c.checkpoint_every = 500
    c.init_prefix = "backbone"
    if "smoke" in args:
        c.model.name = "unet_resnet18"
        c.data.image_size = 64
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
    c.lock()
    return c
