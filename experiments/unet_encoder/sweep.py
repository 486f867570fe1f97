"""U-Net encoder sweep on the synthetic shapes (semantic segmentation, 4 classes incl. background):
ResNet-18 / 34 / 50 encoders trained from scratch, 150 steps at 64 px, batch 16.

    python -m jaxcv.sweep --sweep=experiments/unet_encoder/sweep.py --workdir=runs/experiments/unet_encoder
    python -m jaxcv.plot --sweep_dir=runs/experiments/unet_encoder --x=model.name --y=mIoU \
        --out=experiments/unet_encoder/mIoU_vs_encoder.png

The ResNet-18 run of seed 0 is also the "pretrained backbone" of the detection sweeps (its encoder is
loaded with `init_from`, like an ImageNet backbone in the RetinaNet paper), so run this sweep first.
(The committed detection results used the encoder of this sweep's first version: 300 steps on shapes of
6-32 px, before configs/shapes_unet.py set `data.min_size=12`; a rerun now gives another backbone, so
the detection sweeps reproduce in method, not to the digit.)
"""

from jaxcv.sweep import product

config = "configs/shapes_unet.py"
fixed = {
    "num_train_steps": 150,
    "checkpoint_every": 1000,  # only the final checkpoint
    "log_every": 25,
    "schedule.warmup_steps": 20,
}
metrics = ["mIoU", "dice", "pixel_acc"]
seeds = [0, 1, 2]  # config.seed: initialization and data order (the images are fixed by data.seed)


def get_sweep():
    return product({"model.name": ["unet_resnet18", "unet_resnet34", "unet_resnet50"]})
