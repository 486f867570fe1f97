"""RetinaNet R50-FPN 1x on COCO 2017, the paper recipe (Lin et al. 2017; detectron2/torchvision 1x):
800 px short side (max 1333; here square padding to `image_size`), batch 16, 90k steps, SGD lr 0.01,
momentum 0.9, weight decay 1e-4, linear warmup, x0.1 at 60k and 80k, horizontal flip only.
Expected 36.4 box AP on val2017 (torchvision / detectron2 model zoo).

Data: `tfds build coco/2017 --file_format=array_record`. Backbone: ImageNet ResNet-50 converted with
`python -m jaxcv.convert --arch resnet50 ...` and `--config.init_from=DIR`.
"""

from jaxcv.config import detection_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, ("smoke", "tf_model_garden"))
    preset = "tf_model_garden" if "tf_model_garden" in args else "torchvision"
    c = detection_config(preset)
    c.model.backbone = "resnet50"
    c.data.name = "coco"
    c.data.tfds_name = "coco/2017"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.tfds_data_dir = ""
    c.data.image_size = 128 if "smoke" in args else 1024  # long side 1024 (~800 short side), padded
    c.data.max_boxes = 100
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 90000
    c.eval_every = 10000
    c.checkpoint_every = 2000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.warmup_steps = 1000
    c.schedule.warmup_init = 0.001
    c.schedule.boundaries = (60000, 80000)
    c.schedule.decay_factor = 0.1
    c.init_prefix = "backbone"
    if "smoke" in args:
        c.model.backbone = "resnet18"
        c.model.fpn_channels = 32
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
    c.lock()
    return c
