"""The YOLOv3 training loss (Redmon & Farhadi 2018), as darknet's `yolo_layer.c` forward_yolo_layer assigns and
weighs it; vectorized, static-shape (padded ground truth), jit-able.

Inputs: the raw head maps of `jaxcv.models.darknet.Darknet` (`outputs["raw"]`, one [B, rows, cols, A, 5 + C]
per `[yolo]` section, channel order t_x, t_y, t_w, t_h, t_o, class logits), ground truth `boxes` [B, G, 4]
xyxy in input pixels, `labels` [B, G] int, `mask` [B, G] bool (padding False; boxes without area or with a label
outside 0..C-1 are dropped too, as darknet skips them), `anchors` [K, 2] (w, h) pixels (all the cfg's
anchors) and `masks` (the anchor indices of each yolo layer).

Assignment (darknet): each gt box goes to the single anchor of all K with the best IoU of widths/heights (boxes
centred together; first one on ties), at the layer whose mask holds it (none if no layer does), in the cell
containing its centre (i = floor(cx / W * cols)). A slot (image, layer, cell, anchor) given several gts takes its
box target from the last of them and the union of their classes as class targets, as darknet's in-order loop
does. Every other slot is a negative for objectness unless its predicted box has IoU > ignore_thresh with some
gt of its image (then it is not penalized); darknet's truth_thresh (1 in YOLOv3) is not modelled.

Terms, summed over slots and divided by the batch size, each gt's box terms scaled by s = 2 - w * h (w, h as
fractions of the input), targets tx = cx / W * cols - i, ty likewise, tw = log(w / anchor_w), th likewise:
- `xy`: 0.5 * s * ((sigmoid(t_x) - tx)^2 + (sigmoid(t_y) - ty)^2)  (`xy_loss="mse"`, the paper's squared error
  on the offsets), or s * (BCE(t_x; tx) + BCE(t_y; ty)) (`xy_loss="bce"`: the gradient darknet applies, which
  skips the sigmoid's derivative);
- `wh`: 0.5 * s * ((t_w - tw)^2 + (t_h - th)^2), so its gradient is darknet's delta exactly;
- or, with `box_loss="giou"`, `giou`: s * (1 - GIoU(predicted box, gt box)) instead of `xy` and `wh`;
- `obj`: BCE(t_o; 1) on assigned slots; `noobj`: BCE(t_o; 0) on the negatives; `cls`: sum over classes of
  BCE(t_c; target) on assigned slots. BCE on logits has gradient sigmoid(t) - target: darknet's deltas.
`loss` is the weighted sum (weights `box_weight`, `obj_weight`, `noobj_weight`, `cls_weight`, all 1 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxcv.losses import sigmoid_binary_cross_entropy as bce
from jaxcv.losses import upcast

Array = jax.Array
MAX_LOG_SIZE = 20.0  # predicted log-sizes are clipped here before exp (keeps IoUs finite)


def loss_config(specs: Sequence[Any]) -> dict[str, Any]:
    """`yolov3_loss` keyword arguments from a Darknet's `yolo_specs()`: the (shared) anchors, each layer's mask
    and ignore_thresh."""
    anchors = specs[0].anchors
    if any(s.anchors != anchors for s in specs):
        raise ValueError("the [yolo] sections have different anchors; YOLOv3's assignment needs one anchor list")
    return {"anchors": anchors, "masks": tuple(s.mask for s in specs),
            "ignore_thresh": tuple(s.ignore_thresh for s in specs)}


def _iou_xyxy(a: Array, b: Array) -> tuple[Array, Array, Array]:
    """Elementwise (broadcasting) IoU of xyxy boxes [..., 4]: (iou, union, hull area)."""
    iw = jnp.clip(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
    ih = jnp.clip(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = union - inter
    hull = ((jnp.maximum(a[..., 2], b[..., 2]) - jnp.minimum(a[..., 0], b[..., 0]))
            * (jnp.maximum(a[..., 3], b[..., 3]) - jnp.minimum(a[..., 1], b[..., 1])))
    return inter / jnp.maximum(union, 1e-12), union, hull


def yolov3_loss(raw: Sequence[Array], boxes: Array, labels: Array, mask: Array, *, anchors: Any,
                masks: Sequence[Sequence[int]], image_size: tuple[int, int],
                ignore_thresh: float | Sequence[float] = 0.7, box_loss: str = "mse", xy_loss: str = "mse",
                box_weight: float = 1.0, obj_weight: float = 1.0, noobj_weight: float = 1.0,
                cls_weight: float = 1.0) -> dict[str, Array]:
    """The YOLOv3 loss (module docstring) -> {"xy", "wh" (or "giou"), "obj", "noobj", "cls", "loss"} scalars.
    `image_size`: (H, W) of the network input in pixels; `ignore_thresh`: one value or one per layer."""
    if box_loss not in ("mse", "giou") or xy_loss not in ("mse", "bce"):
        raise ValueError(f"box_loss {box_loss!r} / xy_loss {xy_loss!r}: expected 'mse'|'giou' / 'mse'|'bce'")
    if len(raw) != len(masks):
        raise ValueError(f"{len(raw)} head maps but {len(masks)} anchor masks")
    thresholds = [ignore_thresh] * len(raw) if isinstance(ignore_thresh, int | float) else list(ignore_thresh)
    in_h, in_w = image_size
    dtype = upcast(raw[0]).dtype
    anchors = jnp.asarray(anchors, dtype).reshape(-1, 2)
    boxes = jnp.asarray(boxes, dtype)
    labels = jnp.asarray(labels, jnp.int32)
    b, g = labels.shape
    num_classes = raw[0].shape[-1] - 5
    gw, gh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    gcx, gcy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    valid = jnp.asarray(mask, bool) & (gw > 0) & (gh > 0) & (labels >= 0) & (labels < num_classes)
    # The responsible anchor: best IoU of (w, h) over all anchors, boxes centred together.
    inter = jnp.minimum(gw[..., None], anchors[:, 0]) * jnp.minimum(gh[..., None], anchors[:, 1])
    union = (gw * gh)[..., None] + anchors[:, 0] * anchors[:, 1] - inter
    best = jnp.argmax(inter / jnp.maximum(union, 1e-12), axis=-1)  # [B, G]
    gt_xyxy = jnp.where(valid[..., None], boxes, 0.0)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
    box_scale = 2.0 - (gw / in_w) * (gh / in_h)
    terms = {k: jnp.zeros((), dtype) for k in (("xy", "wh") if box_loss == "mse" else ("giou",))}
    terms.update({k: jnp.zeros((), dtype) for k in ("obj", "noobj", "cls")})
    for t, layer_mask, thresh in zip(raw, masks, thresholds, strict=True):
        t = upcast(t)
        _, rows, cols, a, _ = t.shape
        slots = rows * cols * a
        p = t.reshape(b, slots, 5 + num_classes)
        mask_arr = jnp.asarray(tuple(layer_mask), jnp.int32)
        layer_anchors = anchors[mask_arr]  # [A, 2]
        # Scatter every owned gt to its slot: the last gt (largest index) wins the box, classes are united.
        match = best[..., None] == mask_arr  # [B, G, A]
        owned = valid & match.any(-1)
        gi = jnp.clip(jnp.floor(gcx / in_w * cols), 0, cols - 1).astype(jnp.int32)
        gj = jnp.clip(jnp.floor(gcy / in_h * rows), 0, rows - 1).astype(jnp.int32)
        slot = (gj * cols + gi) * a + jnp.argmax(match, -1).astype(jnp.int32)
        flat = jnp.where(owned, jnp.arange(b, dtype=jnp.int32)[:, None] * slots + slot, b * slots).reshape(-1)
        gt_number = jnp.broadcast_to(jnp.arange(1, g + 1, dtype=jnp.int32), (b, g)).reshape(-1)
        owner = jnp.zeros((b * slots,), jnp.int32).at[flat].max(gt_number, mode="drop").reshape(b, slots)
        cls_target = (jnp.zeros((b * slots, num_classes), dtype)
                      .at[flat].max(onehot.reshape(-1, num_classes), mode="drop").reshape(b, slots, num_classes))
        pos = owner > 0
        idx = jnp.maximum(owner - 1, 0)

        def take(v: Array, idx: Array = idx) -> Array:
            return jnp.take_along_axis(v, idx, axis=1)

        s = jnp.arange(slots)
        anc = layer_anchors[s % a]  # [S, 2]
        xs, ys = ((s // a) % cols).astype(dtype), ((s // a) // cols).astype(dtype)
        sig_xy = jax.nn.sigmoid(p[..., :2])
        log_wh = jnp.minimum(p[..., 2:4], MAX_LOG_SIZE)
        pcx = (xs + sig_xy[..., 0]) / cols * in_w
        pcy = (ys + sig_xy[..., 1]) / rows * in_h
        pwh = jnp.exp(log_wh) * anc
        pred = jnp.stack([pcx - pwh[..., 0] / 2, pcy - pwh[..., 1] / 2, pcx + pwh[..., 0] / 2,
                          pcy + pwh[..., 1] / 2], -1)  # [B, S, 4] px
        scale = jnp.where(pos, take(box_scale), 0.0)
        if box_loss == "mse":
            tx, ty = take(gcx) / in_w * cols - xs, take(gcy) / in_h * rows - ys
            tw = jnp.log(jnp.where(pos, take(gw), anc[:, 0]) / anc[:, 0])
            th = jnp.log(jnp.where(pos, take(gh), anc[:, 1]) / anc[:, 1])
            if xy_loss == "mse":
                xy = 0.5 * ((sig_xy[..., 0] - tx) ** 2 + (sig_xy[..., 1] - ty) ** 2)
            else:
                xy = bce(p[..., 0], jnp.clip(tx, 0, 1)) + bce(p[..., 1], jnp.clip(ty, 0, 1))
            terms["xy"] += jnp.sum(scale * xy)
            terms["wh"] += jnp.sum(scale * 0.5 * ((p[..., 2] - tw) ** 2 + (p[..., 3] - th) ** 2))
        else:
            target = jnp.take_along_axis(gt_xyxy, idx[..., None], axis=1)
            iou, union, hull = _iou_xyxy(pred, target)
            giou = iou - (hull - union) / jnp.maximum(hull, 1e-12)
            terms["giou"] += jnp.sum(scale * (1.0 - giou))
        # Ignore: predictions overlapping some gt by more than the threshold are no negatives.
        ious, _, _ = _iou_xyxy(jax.lax.stop_gradient(pred)[:, :, None, :], gt_xyxy[:, None, :, :])
        best_iou = jnp.max(jnp.where(valid[:, None, :], ious, 0.0), axis=-1, initial=0.0)
        negative = ~pos & (best_iou <= thresh)
        terms["obj"] += jnp.sum(jnp.where(pos, bce(p[..., 4], jnp.ones_like(p[..., 4])), 0.0))
        terms["noobj"] += jnp.sum(jnp.where(negative, bce(p[..., 4], jnp.zeros_like(p[..., 4])), 0.0))
        terms["cls"] += jnp.sum(jnp.where(pos[..., None], bce(p[..., 5:], cls_target), 0.0))
    terms = {k: v / b for k, v in terms.items()}
    weights = {"xy": box_weight, "wh": box_weight, "giou": box_weight, "obj": obj_weight,
               "noobj": noobj_weight, "cls": cls_weight}
    terms["loss"] = sum(weights[k] * v for k, v in terms.items())
    return terms
