"""RetinaNet R50-FPN on PASCAL VOC 07+12 trainval, evaluated on VOC07 test (mmdetection's recipe
reaches ~79 mAP50 with ImageNet-pretrained backbone).

Data: `tfds build voc/2007 voc/2012 --file_format=array_record` (see README). Pretrained backbone:
convert torchvision's resnet50 weights with `python -m jaxcv.convert` and pass
`--config.init_from=DIR`.
"""

import ml_collections

from jaxcv.config import detection_config, parse_config_arg


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config("torchvision")
    c.model.backbone = "resnet50"
    c.data.name = "voc"
    c.data.tfds_name = "voc/2007"
    c.data.extra_train = "voc/2012"  # trainval of 2012 added to 2007 trainval
    c.data.train_split = "train+validation"
    c.data.eval_split = "test"
    c.data.tfds_data_dir = ""
    c.data.image_size = 512
    c.data.max_boxes = 64
    c.data.augment.scale_jitter = (0.8, 1.2)
    c.data.augment.photometric = True
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 18000  # ~ 24 epochs of 07+12 at batch 16
    c.eval_every = 3000
    c.checkpoint_every = 1000
    c.optimizer.learning_rate = 0.01
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.warmup_steps = 500
    c.schedule.boundaries = (12000, 16000)
    c.init_prefix = "backbone"
    c.freeze = ()
    # COCO's numbers and the devkit's VOC07 11-point mAP (the number VOC papers report), side by side.
    c.evals = ml_collections.ConfigDict({"coco": {"type": "coco"}, "voc07": {"type": "voc", "use_07_metric": True}})
    c.checkpoint.best_metric = "VOC07_mAP"
    if "smoke" in args:
        c.data.image_size = 128
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
        c.model.backbone = "resnet18"
        c.model.fpn_channels = 32
    c.lock()
    return c
