"""VGG-16-BN on CIFAR-10 from scratch: SGD with Nesterov momentum, cosine decay, pad-crop + flip.

The common CIFAR VGG recipe (kuangliu/pytorch-cifar and chenyaofo/pytorch-cifar-models: SGD momentum 0.9,
weight decay 5e-4, cosine over 200 epochs, 4-pixel pad-crop and flips, batch 128), here with a peak rate of 0.05
after a one-epoch warmup. The model is torchvision's `vgg16_bn` (`jaxcv.models.vgg`) with the CIFAR VGG head
(`pool_size=(1, 1), hidden=512`: 512 -> 512 -> 512 -> 10 on the 1x1 map of a 32 px input, dropout 0.5, as
chengyangfu/pytorch-vgg-cifar10) instead of torchvision's, which repeats that map to 7x7 for a 25088 -> 4096 Linear
(103M weights). The features keep torchvision's layout and parameter names.

Data: `tfds build cifar10 --file_format=array_record` (or let tfds download on first use).

    python -m jaxcv.main --config=configs/cifar10_vgg16.py --workdir=runs/cifar10_vgg16

Arguments: `:smoke` (a seconds-long run of this config, for tests); `:synthetic` (no download: the built-in
`synthetic_classification` images at 32 px, 10 classes, 4096 train / 512 held out, with VGG-11-BN and the same
recipe over 300 steps of batch 32, a minute or two on a laptop CPU); `:smoke,synthetic` both.
"""

import ml_collections

from jaxcv.config import classification_config, parse_config_arg, smoke

EPOCH = 390  # steps of batch 128 over CIFAR-10's 50000 training images


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ("smoke", "synthetic"))
    c = classification_config()
    c.model.name = "vgg16_bn"
    c.model.dropout = 0.5  # torchvision's, before classifier.3 and classifier.6
    c.model.pool_size = (1, 1)  # the CIFAR head; torchvision's is (7, 7) and 4096 wide
    c.model.hidden = 512
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
