"""Semantic segmentation metrics from a confusion matrix accumulated exactly over the whole set.

Rows of the matrix are the target class, columns the prediction. Pixels whose target is the ignore
index (255) are never counted. Every metric is computed once from the summed matrix (never averaged
per batch), so results do not depend on batching.
- IoU_c = TP / (TP + FP + FN); mIoU is the mean over classes present in target or prediction (NaN-safe).
- Dice_c = 2 TP / (|pred == c| + |target == c|) over the whole set, the fastai `DiceMulti` recipe
  (2 * sum of intersections / sum of (pred + target), per class, mean over classes that occur).
- pixel accuracy = trace / total; per-class accuracy (recall) and its mean over classes in the target.
`void_class` (as in fastai's CamVid `acc_camvid`): pixels whose target is void are dropped, a void
*prediction* elsewhere still counts as a miss, and the void class is left out of every mean.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcv.data.base import IGNORE_INDEX


def confusion_matrix(
    pred: jnp.ndarray,
    target: jnp.ndarray,
    num_classes: int,
    valid_mask: jnp.ndarray | None = None,
    ignore_index: int | None = IGNORE_INDEX,
) -> jnp.ndarray:
    """Jit-able [K, K] int32 confusion matrix (rows target, columns prediction) of label maps.

    pred, target: int [...] of one shape; valid_mask: bool [...] (e.g. padding) or None. Pixels with
    target == ignore_index, or target/pred outside [0, K), are not counted. Counts are int32: sum
    per-batch matrices on the host (`ConfusionMatrix.update_matrix`) for sets beyond 2**31 pixels.
    """
    k = num_classes
    p = jnp.asarray(pred).reshape(-1).astype(jnp.int32)
    t = jnp.asarray(target).reshape(-1).astype(jnp.int32)
    ok = (t >= 0) & (t < k) & (p >= 0) & (p < k)
    if ignore_index is not None:
        ok &= t != ignore_index
    if valid_mask is not None:
        ok &= jnp.asarray(valid_mask).reshape(-1).astype(bool)
    idx = jnp.where(ok, t * k + p, k * k)  # invalid pixels go to an extra bin that is dropped
    return jnp.bincount(idx, length=k * k + 1)[: k * k].reshape(k, k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def metrics_from_confusion(cm: np.ndarray, void_class: int | None = None) -> dict[str, Any]:
    """Segmentation metrics of a [K, K] (target x prediction) count matrix; see the module docstring."""
    cm = np.asarray(cm, np.int64).copy()
    k = cm.shape[0]
    if void_class is not None:
        cm[void_class, :] = 0  # void target pixels are not evaluated
    tp = np.diag(cm).astype(np.float64)
    n_target = cm.sum(1).astype(np.float64)
    n_pred = cm.sum(0).astype(np.float64)
    union = n_target + n_pred - tp
    iou = _safe_div(tp, union)
    dice = _safe_div(2 * tp, n_target + n_pred)
    acc = _safe_div(tp, n_target)
    if void_class is not None:
        iou[void_class] = dice[void_class] = acc[void_class] = np.nan
    total = cm.sum()
    return {
        "per_class_iou": iou,
        "mIoU": _nanmean(iou),
        "per_class_dice": dice,
        "mean_dice": _nanmean(dice),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_accuracy": acc,
        "mean_accuracy": _nanmean(acc),
        "num_classes": k,
    }


class ConfusionMatrix:
    """Host-side accumulator (int64) of a segmentation confusion matrix over a whole evaluation set.

    `update(pred, target)` takes label maps (numpy or jax, any shape); `update_matrix(cm)` adds a
    matrix made on device by `confusion_matrix`; `compute()` returns `metrics_from_confusion`.
    Target values other than [0, K) and ignore_index are an error (bad labels should not vanish).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = IGNORE_INDEX, void_class: int | None = None
    ):
        if void_class is not None and not 0 <= void_class < num_classes:
            raise ValueError(f"void_class {void_class} is not in [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.void_class = void_class
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: Any, target: Any, valid_mask: Any | None = None) -> None:
        """pred, target: int [...] label maps of one shape; valid_mask: optional bool [...]."""
        k = self.num_classes
        p = np.asarray(pred).reshape(-1).astype(np.int64)
        t = np.asarray(target).reshape(-1).astype(np.int64)
        if p.shape != t.shape:
            raise ValueError(f"pred and target sizes differ: {np.shape(pred)} vs {np.shape(target)}")
        keep = np.ones(t.shape, bool) if self.ignore_index is None else t != self.ignore_index
        if valid_mask is not None:
            keep &= np.asarray(valid_mask, bool).reshape(-1)
        p, t = p[keep], t[keep]
        if t.size and (t.min() < 0 or t.max() >= k):
            raise ValueError(
                f"target values must be in [0, {k}) or {self.ignore_index}; got {t.min()}..{t.max()}"
            )
        if p.size and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"pred values must be in [0, {k}); got {p.min()}..{p.max()}")
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def update_matrix(self, cm: Any) -> None:
        """Adds a [K, K] count matrix (e.g. from the jitted `confusion_matrix`)."""
        cm = np.asarray(cm)
        if cm.shape != self.matrix.shape:
            raise ValueError(f"confusion matrix shape {cm.shape} != {self.matrix.shape}")
        self.matrix += cm.astype(np.int64)

    def compute(self) -> dict[str, Any]:
        out = metrics_from_confusion(self.matrix, self.void_class)
        out["confusion_matrix"] = self.matrix.copy()
        return out
