"""Transfer learning from an ImageNet MobileNetV3-Small (torchvision) on EuroSAT RGB or your image folder.

Convert torchvision's weights once where torch is installed (README, "Pretrained weights"):

    python -m jaxcv.convert --arch mobilenet_v3_small --weights mobilenet_v3_small.safetensors --out weights/mnv3s
    python -m jaxcv.main --config=configs/mobilenet_v3_transfer.py:frozen --workdir=runs/mnv3_frozen \
        --config.init_from=weights/mnv3s

`:frozen` removes the top (the 1000-class layer is left out: its shape does not match) and trains a new head on the
frozen features, the course's first step; the default fine-tunes everything with a 10x lower rate for `features`.
`:folder` reads an ImageNet-style folder (`--config.data.train_dir=... --config.data.val_dir=...`) instead of tfds
`eurosat/rgb`; `:synthetic` trains on the built-in synthetic images (no download, minutes on a CPU); `:smoke` is a
seconds-long run.
"""

from jaxcv.config import classification_config, parse_config_arg, smoke

FEATURES = tuple(f"features_{i}" for i in range(1, 12)) + ("features_0_0", "features_0_1", "features_12_0",
                                                           "features_12_1")
NEW_HEAD = ("classifier_0", "classifier_3")  # Linear-Hardswish-Dropout-Linear, as torchvision's classifier


def _drop_tfds_keys(c) -> None:
    """Removes the EuroSAT tfds keys when another dataset is chosen (its dataset would reject them)."""
    for key in ("tfds_name", "tfds_data_dir", "train_split", "eval_split"):
        del c.data[key]


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, ("smoke", "frozen", "folder", "synthetic"))
    c = classification_config()
    c.model.name = "mobilenet_v3_small"
    c.data.name = "eurosat"
    c.data.tfds_name = "eurosat/rgb"
    c.data.tfds_data_dir = ""
    c.data.train_split = "train[:80%]"
    c.data.eval_split = "train[80%:]"
    c.data.image_size = 64
    c.data.augment.crop_scale = (0.5, 1.0)
    c.batch_size = 64
    c.eval_batch_size = 256
    c.num_train_steps = 3000
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup_steps = 100
    c.init_from = ""  # a jaxcv.convert output directory
    c.init_prefix = ""
    if "frozen" in args:
        c.freeze = FEATURES
    else:
        c.lr_multipliers = {p: 0.1 for p in FEATURES}
    if "folder" in args:
        c.data.name = "image_folder"
        _drop_tfds_keys(c)
        c.data.train_dir = ""
        c.data.val_dir = ""
    if "synthetic" in args:
        c.data.name = "synthetic_classification"
        _drop_tfds_keys(c)
        c.data.update({"num_classes": 4, "image_size": 64, "num_train": 1024, "num_val": 256, "seed": 0})
        c.batch_size, c.eval_batch_size, c.num_train_steps, c.eval_every = 32, 64, 300, 0
        c.lr_multipliers = {}
        c.model.bn_momentum = 0.9  # from scratch in 300 steps: running statistics must follow the weights
    if "smoke" in args:
        smoke(c)
        if c.data.name == "synthetic_classification":
            c.data.update({"num_train": 64, "num_val": 16})
    c.lock()
    return c
