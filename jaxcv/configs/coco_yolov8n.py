"""YOLOv8n on COCO 2017 from scratch, ultralytics' published recipe as far as jaxcv's trainer expresses it:
640 px, batch 64, 500 epochs (what the released YOLOv8 detection models were trained for; 1849 steps an epoch),
SGD lr 0.01, momentum 0.937, Nesterov, weight decay 5e-4 on conv weights, gradient norm clipped at 10, a
3-epoch linear warmup from 0, decay to lrf = 0.01 of the peak, EMA of the weights (decay 0.9999, tau 2000),
ultralytics' training pipeline (jaxcv/data/mosaic.py): mosaic of 4 images on every item, then a random affine
with scale 0.5-1.5 and translation 0.1, HSV jitter (0.015, 0.7, 0.4) and horizontal flip, with the mosaic off
for the last 10 epochs (close_mosaic). Inputs are RGB in [0, 1] with grey 114 padding, as ultralytics' (so
its converted weights evaluate here as they do there). The head's biases start as ultralytics' `bias_init`. The
loss is ultralytics' back-propagated sum (box 7.5, cls 0.5, dfl 1.5, times the batch size;
jaxcv/detectors/yolov8.py), so these numbers apply unscaled. Expected 37.3 box AP on val2017 for ultralytics'
own run (REPRODUCING.md).

Not expressed here: the warmup's bias learning rate (0.1 -> lr) and momentum (0.8 -> 0.937), the linear decay
(ultralytics' default; the cosine here is its `cos_lr=True` variant, to the same final factor), mixup and
copy-paste (both off in ultralytics' defaults), centred letterboxing (padding goes to the
bottom/right here) and rectangular validation batches (square 640 here).

Data: `tfds build coco/2017 --file_format=array_record`.
"""

from jaxcv.config import detection_config, parse_config_arg

STEPS_PER_EPOCH = 1849  # ceil(118287 train2017 images / 64)


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = detection_config(head="yolov8")
    c.model.scale = "n"
    c.data.name = "coco"
    c.data.tfds_name = "coco/2017"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.tfds_data_dir = ""
    c.data.image_size = 640
    c.data.max_boxes = 100
    c.data.augment.hflip = True
    c.data.augment.scale_jitter = (0.5, 1.5)  # ultralytics' scale=0.5 (the affine after the mosaic)
    c.data.augment.photometric = True  # its HSV jitter (hsv_h 0.015, hsv_s 0.7, hsv_v 0.4)
    c.data.augment.mosaic = 1.0  # ultralytics' mosaic=1.0
    c.data.augment.close_mosaic = 10  # epochs at the end without mosaic, ultralytics' close_mosaic=10
    c.preprocess.normalize = "unit"  # RGB / 255, as ultralytics
    c.preprocess.pad_value = 114.0  # its letterbox grey
    c.batch_size = 64
    c.eval_batch_size = 64
    c.num_train_steps = 500 * STEPS_PER_EPOCH
    c.eval_every = 10 * STEPS_PER_EPOCH
    c.checkpoint_every = STEPS_PER_EPOCH
    c.optimizer.update({"name": "sgd", "learning_rate": 0.01, "momentum": 0.937, "nesterov": True,
                        "weight_decay": 5e-4, "clip_grad_norm": 10.0})
    c.schedule.update({"name": "warmup_cosine", "warmup_steps": 3 * STEPS_PER_EPOCH, "warmup_init": 0.0,
                       "end_factor": 0.01})
    c.ema_decay = 0.9999
    c.ema_tau = 2000.0
    if "smoke" in args:
        c.data.image_size = 64
        c.batch_size = 2
        c.eval_batch_size = 2
        c.num_train_steps = 2
        c.schedule.warmup_steps = 1
    c.lock()
    return c
