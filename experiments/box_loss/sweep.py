"""Box regression loss: L1 (torchvision RetinaNet), smooth L1 (beta 1/9, Detectron) and GIoU on decoded
boxes (torchvision's RetinaNet v2), with the focal loss sweep's small setting (gamma 2, alpha 0.25).

    mkdir -p runs/experiments/box_loss    # the L1 runs are the focal sweep's gamma=2 runs (same configs):
    for s in 0 1 2; do ln -sfn "$PWD/runs/experiments/focal_loss/loss.gamma=2,loss.alpha=0.25,seed=$s" \
        "runs/experiments/box_loss/loss.box_loss=l1,seed=$s"; done
    python -m jaxcv.sweep --sweep=experiments/box_loss/sweep.py --workdir=runs/experiments/box_loss
    python -m jaxcv.plot --sweep_dir=runs/experiments/box_loss --x=loss.box_loss --y=AP \
        --out=experiments/box_loss/AP_vs_box_loss.png
"""

import importlib.util
from pathlib import Path

from jaxcv.sweep import product

_spec = importlib.util.spec_from_file_location("focal", Path(__file__).parents[1] / "focal_loss" / "sweep.py")
_focal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_focal)

config = _focal.config
fixed = _focal.SMALL
metrics = _focal.metrics
seeds = _focal.seeds


def get_sweep():
    return product({"loss.box_loss": ["l1", "smooth_l1", "giou"]})
