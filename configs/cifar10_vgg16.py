"""VGG-16-BN on CIFAR-10 from scratch: SGD with Nesterov momentum, cosine decay, pad-crop + flip.

The common CIFAR VGG recipe (kuangliu/pytorch-cifar and chenyaofo/pytorch-cifar-models: SGD momentum 0.9,
weight decay 5e-4, cosine over 200 epochs, 4-pixel pad-crop and flips, batch 128), here with a peak rate of 0.05
after a one-epoch warmup. The model is torchvision's `vgg16_bn` (`jaxcv.models.vgg`) with its ImageNet classifier:
at 32 px the features are 1x1, which `AdaptiveAvgPool2d((7, 7))` repeats to 7x7 before the 25088 -> 4096 -> 4096
-> 10 classifier (dropout 0.5). That works, but costs parameters a CIFAR head (512 -> 10) would not need;
`jaxcv.models.vgg` has no CIFAR-style head, and the torchvision layout keeps its ImageNet weights loadable.

Data: `tfds build cifar10 --file_format=array_record` (or let tfds download on first use).

    python -m jaxcv.main --config=configs/cifar10_vgg16.py --workdir=runs/cifar10_vgg16

Arguments: `:smoke` (a seconds-long run of this config, for tests); `:synthetic` (no download: the built-in
`synthetic_classification` images at 32 px, 10 classes, with VGG-11-BN and the same SGD recipe, sized to learn on
a laptop CPU in a couple of minutes); `:smoke,synthetic` both.
"""

import ml_collections

from jaxcv.config import classification_config, parse_config_arg, smoke

EPOCH = 390  # steps of batch 128 over CIFAR-10's 50000 training images


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ("smoke", "synthetic"))
    c = classification_config()
    c.model.name = "vgg16_bn"
    c.model.dropout = 0.5  # torchvision's, before classifier.3 and classifier.6
    if "synthetic" in args:
        c.model.name = "vgg11_bn"
        c.data.name = "synthetic_classification"
        c.data.num_train = 4096
        c.data.num_val = 512
    else:
        c.data.name = "cifar10"
        c.data.tfds_name = "cifar10"
        c.data.tfds_data_dir = ""
        c.data.train_split = "train"
        c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.num_classes = 10
    c.data.augment.random_resized_crop = False
    c.data.augment.pad_crop = 4  # CIFAR-style: zero-pad 4, random 32x32 crop, flip
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_train_steps = 200 * EPOCH
    c.eval_every = 10 * EPOCH
    c.checkpoint_every = 5 * EPOCH
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = EPOCH
    if "synthetic" in args:
        c.batch_size = 32
        c.eval_batch_size = 128
        c.num_train_steps = 300
        c.eval_every = 0
        c.log_every = 25
        c.checkpoint_every = 150
        c.schedule.warmup_steps = 30
    if "smoke" in args:
        smoke(c)
    c.lock()
    return c
