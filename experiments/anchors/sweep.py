"""Anchor ablation after the RetinaNet paper (Table 1c): scales x aspect ratios per location
1 x 1 (scale 1, ratio 1:1), 2 x 3 (scales 2^0, 2^(1/2); ratios 1:2, 1:1, 2:1) and 3 x 3 (scales 2^0,
2^(1/3), 2^(2/3): the default), with the focal loss sweep's small setting (gamma 2, alpha 0.25).

    mkdir -p runs/experiments/anchors    # the 3 x 3 runs are the focal sweep's gamma=2 runs (same configs):
    for s in 0 1 2; do ln -sfn "$PWD/runs/experiments/focal_loss/loss.gamma=2,loss.alpha=0.25,seed=$s" \
        "runs/experiments/anchors/sc3_ar3,seed=$s"; done
    python -m jaxcv.sweep --sweep=experiments/anchors/sweep.py --workdir=runs/experiments/anchors
    python -m jaxcv.plot --sweep_dir=runs/experiments/anchors --x=anchors.scales --y=AP \
        --out=experiments/anchors/AP_vs_anchors.png
    python -m jaxcv.plot --sweep_dir=runs/experiments/anchors --x=anchors.scales --y=AR100 \
        --out=experiments/anchors/AR100_vs_anchors.png
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("focal", Path(__file__).parents[1] / "focal_loss" / "sweep.py")
_focal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_focal)

config = _focal.config
fixed = _focal.SMALL
metrics = _focal.metrics
seeds = _focal.seeds
RATIOS = (0.5, 1.0, 2.0)


def get_sweep():
    return [
        {"_name": "sc1_ar1", "anchors.scales": (1.0,), "anchors.aspect_ratios": (1.0,)},
        {"_name": "sc2_ar3", "anchors.scales": (1.0, 2 ** 0.5), "anchors.aspect_ratios": RATIOS},
        {"_name": "sc3_ar3", "anchors.scales": (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), "anchors.aspect_ratios": RATIOS},
    ]
