"""Transfer learning on EuroSAT RGB (10 land-cover classes, 64x64) from an ImageNet ResNet-18.

Convert the torchvision weights once (`python -m jaxcv.convert --arch resnet18 --weights
resnet18.safetensors --out weights/resnet18`) and pass `--config.init_from=weights/resnet18`.
`:frozen` trains only the new head (a frozen feature extractor); the default fine-tunes everything
with a 10x lower backbone learning rate.
"""

from jaxcv.config import classification_config, parse_config_arg

BACKBONE = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, ("smoke", "frozen"))
    c = classification_config()
    c.model.name = "resnet18"
    c.data.name = "eurosat"
    c.data.tfds_name = "eurosat/rgb"
    c.data.tfds_data_dir = ""
    c.data.train_split = "train[:80%]"
    c.data.eval_split = "train[80%:]"
    c.data.image_size = 64
    c.data.num_classes = 10
    c.data.augment.crop_scale = (0.5, 1.0)
    c.batch_size = 64
    c.eval_batch_size = 256
    c.num_train_steps = 3000
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.schedule.warmup_steps = 100
    c.init_from = ""  # a jaxcv.convert output directory
    c.init_prefix = ""
    if "frozen" in args:
        c.freeze = BACKBONE
    else:
        c.lr_multipliers = {p: 0.1 for p in BACKBONE}
    if "smoke" in args:
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_train_steps = 2
    c.lock()
    return c
