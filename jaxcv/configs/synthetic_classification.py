"""Small CNN on built-in synthetic images (no download): the classification smoke test and teaching demo.

    python -m jaxcv.main --config=configs/synthetic_classification.py --workdir=runs/synthetic_cls
"""

from jaxcv.config import classification_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = classification_config()
    c.model.name = "small_cnn"
    c.data.name = "synthetic_classification"
    c.data.image_size = 32
    c.data.num_classes = 4
    c.data.num_train = 2048
    c.data.num_val = 256
    c.data.max_objects = 3
    c.data.multilabel = False
    c.data.augment.crop_scale = (0.6, 1.0)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_train_steps = 400
    c.log_every = 50
    c.checkpoint_every = 200
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup_steps = 20
    if "smoke" in args:
        c.data.num_train = 256
        c.data.num_val = 64
        c.batch_size = 16
        c.num_train_steps = 6
        c.log_every = 2
        c.checkpoint_every = 4
    c.lock()
    return c
