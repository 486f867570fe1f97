"""Focal loss ablation after the RetinaNet paper (Lin et al. 2017, Table 1a/1b), at toy scale on the
synthetic shapes: gamma in {0, 0.5, 1, 2, 5} with the paper's best alpha for each (0.75, 0.5, 0.25,
0.25, 0.25), plus alpha in {0.25, 0.5} at gamma = 0 (alpha-balanced cross-entropy; 0.75 is above).

    python -m jaxcv.sweep --sweep=experiments/focal_loss/sweep.py --workdir=runs/experiments/focal_loss
    python -m jaxcv.plot --sweep_dir=runs/experiments/focal_loss --x=loss.gamma --y=AP \
        --out=experiments/focal_loss/AP_vs_gamma.png
    python -m jaxcv.plot --sweep_dir=runs/experiments/focal_loss --x=loss.alpha --y=AP50 --where=loss.gamma=0 \
        --out=experiments/focal_loss/AP50_vs_alpha_ce.png

Every detection sweep shares `SMALL` (below): RetinaNet ResNet-18-FPN (32 FPN channels) at 128 px,
150 steps of batch 8, AdamW 1e-3 with 20 warmup steps, 1024 training / 128 held-out images, and the
ResNet-18 encoder of the U-Net encoder sweep as its pretrained backbone (the paper starts from
ImageNet weights; from scratch 150 steps give AP ~0.01, which ranks nothing), so run
experiments/unet_encoder first. Each setting runs with 3 seeds (one run: ~1.5 min on 2 CPU cores).
"""

from jaxcv.sweep import zipped

seeds = [0, 1, 2]  # config.seed: initialization and data order (the images are fixed by data.seed)
config = "configs/shapes_retinanet.py"
SMALL = {
    "num_train_steps": 150,
    "model.fpn_channels": 32,
    "data.num_train": 1024,
    "data.num_val": 128,
    "data.min_objects": 1,  # the scenes of these runs (the main job's config has busier ones since)
    "data.max_objects": 4,
    "data.min_size": 16.0,
    "batch_size": 8,
    "schedule.warmup_steps": 20,
    "checkpoint_every": 1000,  # only the final checkpoint
    "log_every": 25,
    "init_from": "runs/experiments/unet_encoder/model.name=unet_resnet18,seed=0",
    "init_prefix": "",  # the U-Net's `backbone/...` parameters land on the RetinaNet's `backbone/...`
}
fixed = SMALL
metrics = ["AP", "AP50", "AP75", "APs", "APm", "AR100"]


def get_sweep():
    table_1b = zipped({"loss.gamma": [0.0, 0.5, 1.0, 2.0, 5.0], "loss.alpha": [0.75, 0.5, 0.25, 0.25, 0.25]})
    table_1a = [{"loss.gamma": 0.0, "loss.alpha": a} for a in (0.25, 0.5)]
    return table_1b + table_1a
