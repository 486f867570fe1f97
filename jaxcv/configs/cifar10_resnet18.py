"""ResNet-18 on CIFAR-10 from scratch (SGD, one-cycle-like cosine schedule, pad-crop + flip).

Data: `tfds build cifar10 --file_format=array_record` (or let tfds download on first use).
"""

from jaxcv.config import classification_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = classification_config()
    c.model.name = "resnet18"
    c.data.name = "cifar10"
    c.data.tfds_name = "cifar10"
    c.data.tfds_data_dir = ""
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.num_classes = 10
    c.data.augment.random_resized_crop = False
    c.data.augment.pad_crop = 4  # CIFAR-style: pad 4, random 32x32 crop, flip
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_train_steps = 39000  # 100 epochs
    c.eval_every = 3900
    c.checkpoint_every = 1950
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 780
    if "smoke" in args:
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_train_steps = 2
    c.lock()
    return c
