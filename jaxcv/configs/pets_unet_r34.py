"""U-Net with a ResNet-34 encoder on Oxford-IIIT Pet trimaps (3 classes: pet, background, border),
as fastai's `unet_learner(resnet34)` and the Keras segmentation tutorial.

Data: `tfds build oxford_iiit_pet --file_format=array_record`. Encoder weights: convert torchvision's
resnet34 and pass `--config.init_from=DIR` (they load under `backbone`).
"""

from jaxcv.config import parse_config_arg, segmentation_config


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = segmentation_config()
    c.model.name = "unet_resnet34"
    c.data.name = "pets"
    c.data.tfds_name = "oxford_iiit_pet"
    c.data.tfds_data_dir = ""
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 160
    c.data.num_classes = 3
    c.data.augment.scale_jitter = (0.75, 1.25)
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 5000
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
