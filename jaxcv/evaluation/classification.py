"""Classification metrics (host-side numpy): top-k accuracy, per-class precision/recall from a
confusion matrix, a saved confusion-matrix figure, and multi-label F1 / mAP.

- top-k: a sample is correct when its label is among the k highest scores (ties: lower class index
  first, a stable descending sort); keys for k > num_classes are left out.
- precision/recall per class from the confusion matrix (rows target, columns prediction); NaN where a
  class is never predicted / never present, macro averages ignore NaN.
- multi-label F1 at a probability threshold (positive when prob > threshold, as torchmetrics and fastai's
  `accuracy_multi`), per class 2TP / (2TP + FP + FN), 0 when the class is neither present nor predicted
  (sklearn's zero_division=0); macro and micro F1.
- multi-label AP per class exactly as sklearn `average_precision_score` (step-wise sum of
  (R_n - R_{n-1}) P_n over distinct score thresholds, no interpolation); mAP averages classes that have
  a positive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _topk_hits(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """logits [N, C], labels [N] -> for each k <= C, bool [N] whether the label is in the top k."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    c = logits.shape[-1]
    order = np.argsort(-logits, axis=-1, kind="stable")  # rank 0 = best; ties: lower index first
    rank = np.argmax(order == labels[:, None], axis=-1)
    return {k: rank < k for k in ks if k <= c}


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...} of logits [N, C] (any monotone scores) against int labels [N]."""
    return {
        f"top{k}": float(h.mean()) if h.size else float("nan")
        for k, h in _topk_hits(logits, labels, ks).items()
    }


def confusion_matrix_np(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [K, K], rows true label, columns prediction."""
    pred, labels = np.asarray(pred, np.int64).reshape(-1), np.asarray(labels, np.int64).reshape(-1)
    for name, v in (("pred", pred), ("labels", labels)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}); got {v.min()}..{v.max()}")
    return np.bincount(labels * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def precision_recall_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Per-class precision [K] and recall [K] (NaN where undefined), their NaN-ignoring macro means,
    and accuracy, from a [K, K] matrix with rows = true label."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), np.nan)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)

    def mean(x: np.ndarray) -> float:
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else float("nan")

    total = cm.sum()
    return {
        "precision": precision,
        "recall": recall,
        "macro_precision": mean(precision),
        "macro_recall": mean(recall),
        "accuracy": float(tp.sum() / total) if total else float("nan"),
    }


def _json_safe(x: np.ndarray) -> list[Any]:
    return [None if (isinstance(v, float) and np.isnan(v)) else v for v in np.asarray(x).tolist()]


def save_confusion_matrix(
    cm: np.ndarray, class_names: Sequence[str], path_png: str | Path, path_json: str | Path
) -> None:
    """Writes the matrix as a PNG heat map (rows normalized, counts printed for up to 30 classes) and as
    JSON {class_names, matrix, precision, recall, accuracy}. Uses matplotlib's Agg canvas directly, so
    no display and no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    pr = precision_recall_from_confusion(cm)
    with open(path_json, "w") as f:
        json.dump(
            {
                "class_names": list(class_names),
                "matrix": cm.astype(np.int64).tolist(),
                "precision": _json_safe(pr["precision"]),
                "recall": _json_safe(pr["recall"]),
                "accuracy": None if np.isnan(pr["accuracy"]) else pr["accuracy"],
            },
            f,
            indent=1,
        )
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    size = min(max(4.0, 0.45 * k + 2), 30.0)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k), labels=list(class_names), rotation=90)
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {pr['accuracy']:.4f}")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    fig.savefig(path_png, dpi=100)


def multilabel_f1(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """probs [N, C] in [0, 1], targets [N, C] multi-hot -> per-class F1 [C], macro_f1, micro_f1."""
    pred = np.asarray(probs) > threshold
    t = np.asarray(targets).astype(bool)
    tp = (pred & t).sum(0).astype(np.float64)
    fp = (pred & ~t).sum(0).astype(np.float64)
    fn = (~pred & t).sum(0).astype(np.float64)
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    micro_den = den.sum()
    return {
        "per_class_f1": f1,
        "macro_f1": float(f1.mean()) if f1.size else float("nan"),
        "micro_f1": float(2 * tp.sum() / micro_den) if micro_den > 0 else 0.0,
    }


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Binary AP as sklearn `average_precision_score`: sum over distinct thresholds (descending) of
    (R_n - R_{n-1}) * P_n; NaN without positives."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(targets).reshape(-1).astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # one point per distinct score
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_map(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """scores [N, C] (logits or probabilities), targets [N, C] multi-hot -> per_class_ap [C] (NaN for
    classes without positives) and mAP over the others."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    ok = ~np.isnan(ap)
    return {"per_class_ap": ap, "mAP": float(ap[ok].mean()) if ok.any() else float("nan")}


class ClassificationEvaluator:
    """Accumulates a whole evaluation set, then computes the metrics once.

    Single-label: `update(logits [N, C], labels [N] int)` -> compute() gives top-k accuracies (exact
    counts), confusion matrix and precision/recall. Multi-label (`multilabel=True`):
    `update(logits [N, C], labels [N, C] multi-hot)` -> F1 at `threshold` on sigmoid(logits) and mAP
    (computed on the logits: AP only depends on the order, and sigmoid would tie saturated scores).
    """

    def __init__(
        self, num_classes: int, multilabel: bool = False, ks: Sequence[int] = (1, 5), threshold: float = 0.5
    ):
        self.num_classes, self.multilabel, self.ks, self.threshold = (
            num_classes,
            multilabel,
            tuple(ks),
            threshold,
        )
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.hits = {k: 0 for k in self.ks if k <= self.num_classes}
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, logits: Any, labels: Any) -> None:
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}], got {logits.shape}")
        if self.multilabel:
            if labels.shape != logits.shape:
                raise ValueError(f"multi-label targets must be {logits.shape}, got {labels.shape}")
            self._scores.append(logits)
            self._targets.append(labels.astype(bool))
            return
        labels = labels.reshape(-1).astype(np.int64)
        for k, h in _topk_hits(logits, labels, self.ks).items():
            self.hits[k] += int(h.sum())
        self.matrix += confusion_matrix_np(np.argmax(logits, -1), labels, self.num_classes)
        self.count += labels.size

    def compute(self) -> dict[str, Any]:
        if self.multilabel:
            c = self.num_classes
            s = np.concatenate(self._scores) if self._scores else np.zeros((0, c))
            t = np.concatenate(self._targets) if self._targets else np.zeros((0, c), bool)
            probs = 1.0 / (1.0 + np.exp(-s))
            return {**multilabel_f1(probs, t, self.threshold), **multilabel_map(s, t), "count": len(s)}
        n = self.count
        out: dict[str, Any] = {f"top{k}": (h / n if n else float("nan")) for k, h in self.hits.items()}
        out.update(precision_recall_from_confusion(self.matrix))
        out["confusion_matrix"] = self.matrix.copy()
        out["count"] = self.count
        return out
