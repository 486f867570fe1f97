"""YOLOv3 loss (jaxcv.losses_yolov3): hand-computed cases, a loop-by-loop emulation of darknet's yolo_layer.c,
padding invariance, one compilation for any number of real boxes, and a tiny darknet model that learns."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

import jaxcv.models.darknet as darknet
from jaxcv.losses_yolov3 import loss_config, yolov3_loss

# yolov3-mini's anchors and masks; at a 64x64 input its heads are 4x4 (mask 3,4,5) then 8x8 (mask 0,1,2).
ANCHORS = ((5, 7), (9, 11), (14, 22), (31, 32), (52, 65), (132, 123))
MASKS = ((3, 4, 5), (0, 1, 2))
SIZE = (64, 64)
C = 3
LOG2 = math.log(2.0)


def zero_maps(batch: int = 1) -> list[np.ndarray]:
    return [np.zeros((batch, 4, 4, 3, 5 + C), np.float32), np.zeros((batch, 8, 8, 3, 5 + C), np.float32)]


_STATIC = ("anchors", "masks", "image_size", "ignore_thresh", "box_loss", "xy_loss")
_jit_loss = jax.jit(yolov3_loss, static_argnames=_STATIC)


def loss(raw, boxes, labels, mask, **kw):
    kw = {"anchors": ANCHORS, "masks": MASKS, "image_size": SIZE, **kw}
    out = _jit_loss([jnp.asarray(r) for r in raw], jnp.asarray(boxes, jnp.float32), jnp.asarray(labels),
                      jnp.asarray(mask), **kw)
    return {k: float(v) for k, v in out.items()}


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _bce(z, t):
    return max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))


def _iou_cxcywh(a, b):
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = w * h if w > 0 and h > 0 else 0.0
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def darknet_reference(raw, boxes, labels, mask, ignore_thresh, xy_loss="mse"):
    """forward_yolo_layer's loops, in float64, on the loss's definitions (module docstring)."""
    height, width = SIZE
    terms = dict(xy=0.0, wh=0.0, obj=0.0, noobj=0.0, cls=0.0)
    stats = dict(ignored=0, positives=0)
    batch = len(boxes)
    for b in range(batch):
        truths = [((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height, int(c))
                  for (x1, y1, x2, y2), c, m in zip(boxes[b], labels[b], mask[b], strict=True) if m]
        for t, layer_mask in zip(raw, MASKS, strict=True):
            t = np.asarray(t[b], np.float64)
            rows, cols, a = t.shape[:3]
            state = {}
            for j in range(rows):
                for i in range(cols):
                    for n in range(a):
                        aw, ah = ANCHORS[layer_mask[n]]
                        pred = ((i + _sig(t[j, i, n, 0])) / cols, (j + _sig(t[j, i, n, 1])) / rows,
                                math.exp(t[j, i, n, 2]) * aw / width, math.exp(t[j, i, n, 3]) * ah / height)
                        best = max([_iou_cxcywh(pred, tr) for tr in truths], default=0.0)
                        state[j, i, n] = "ignored" if best > ignore_thresh else "negative"
            assigned = {}
            for tr in truths:
                ious = [_iou_cxcywh((0, 0, aw / width, ah / height), (0, 0, tr[2], tr[3])) for aw, ah in ANCHORS]
                best_n, best_iou = 0, 0.0
                for n, iou in enumerate(ious):
                    if iou > best_iou:
                        best_n, best_iou = n, iou
                if best_n not in layer_mask:
                    continue
                key = (int(tr[1] * rows), int(tr[0] * cols), layer_mask.index(best_n))
                _, classes = assigned.get(key, (None, set()))
                assigned[key] = (tr, classes | {tr[4]})
                state[key] = "positive"
            for (j, i, n), st in state.items():
                z = t[j, i, n]
                if st == "negative":
                    terms["noobj"] += _bce(z[4], 0.0)
                stats["ignored"] += st == "ignored"
            for (j, i, n), (tr, classes) in assigned.items():
                z = t[j, i, n]
                aw, ah = ANCHORS[layer_mask[n]]
                s = 2 - tr[2] * tr[3]
                tx, ty = tr[0] * cols - i, tr[1] * rows - j
                tw, th = math.log(tr[2] * width / aw), math.log(tr[3] * height / ah)
                if xy_loss == "mse":
                    terms["xy"] += 0.5 * s * ((_sig(z[0]) - tx) ** 2 + (_sig(z[1]) - ty) ** 2)
                else:
                    terms["xy"] += s * (_bce(z[0], tx) + _bce(z[1], ty))
                terms["wh"] += 0.5 * s * ((z[2] - tw) ** 2 + (z[3] - th) ** 2)
                terms["obj"] += _bce(z[4], 1.0)
                terms["cls"] += sum(_bce(z[5 + k], float(k in classes)) for k in range(C))
                stats["positives"] += 1
    terms = {k: v / batch for k, v in terms.items()}
    terms["loss"] = sum(terms.values())
    return terms, stats


def test_one_box_hand_computed():
    """A 10x12 box centred at (20, 28): anchor 1 (9x11, IoU 99/120) of all six is best, so the stride-8 layer
    (mask 0,1,2) is responsible, local anchor 1, cell (x 2, y 3); with zero logits every term is known."""
    raw = zero_maps()
    raw[1][0, 3, 2, 1, 4] = 3.0  # objectness logit of the responsible slot
    boxes, labels, mask = [[[15, 22, 25, 34]]], [[2]], [[True]]
    out = loss(raw, boxes, labels, mask, ignore_thresh=0.7)
    s = 2 - (10 / 64) * (12 / 64)
    assert out["xy"] == pytest.approx(0.0, abs=1e-7)  # sigmoid(0) = 0.5 = the centre's offset in its cell
    assert out["wh"] == pytest.approx(0.5 * s * (math.log(10 / 9) ** 2 + math.log(12 / 11) ** 2), rel=1e-5)
    assert out["obj"] == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-5)
    assert out["cls"] == pytest.approx(3 * LOG2, rel=1e-5)
    # every other slot is a negative: 4*4*3 + 8*8*3 - 1; none of their boxes overlaps the gt by > 0.7
    assert out["noobj"] == pytest.approx(239 * LOG2, rel=1e-5)
    assert out["loss"] == pytest.approx(sum(v for k, v in out.items() if k != "loss"), rel=1e-6)
    # ignore_thresh 0.35: the 14x22 anchor of the same cell (IoU 120/308) is no longer a negative
    assert loss(raw, boxes, labels, mask, ignore_thresh=0.35)["noobj"] == pytest.approx(238 * LOG2, rel=1e-5)
    # a box whose best anchor is 52x65 goes to the stride-16 layer (mask 3,4,5), local anchor 1, cell (1, 2)
    raw2 = zero_maps()
    raw2[0][0, 2, 1, 1, 4] = -2.0
    out2 = loss(raw2, [[[4, 10, 54, 74]]], [[0]], [[True]], ignore_thresh=1.0)
    assert out2["obj"] == pytest.approx(math.log1p(math.exp(2.0)), rel=1e-5)
    assert out2["noobj"] == pytest.approx(239 * LOG2, rel=1e-5)


def _random_case(seed: int, batch: int = 2, g: int = 6):
    rng = np.random.default_rng(seed)
    raw = [rng.normal(0, 1, (batch, 4, 4, 3, 5 + C)).astype(np.float32),
           rng.normal(0, 1, (batch, 8, 8, 3, 5 + C)).astype(np.float32)]
    for r in raw:
        r[..., 2:4] *= 0.3
    wh = np.array(ANCHORS, np.float32)[rng.integers(0, 5, (batch, g))] * rng.uniform(0.7, 1.3, (batch, g, 2))
    centre = rng.uniform(8, 56, (batch, g, 2))
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], -1).astype(np.float32)
    boxes[0, 1] = boxes[0, 0] + np.float32(0.5)  # the same slot as box 0: box target from box 1, classes united
    labels = rng.integers(0, C, (batch, g))
    labels[0, 1] = (labels[0, 0] + 1) % C
    mask = np.zeros((batch, g), bool)
    mask[0, :4] = True
    mask[1, :3] = True
    return raw, boxes, labels, mask


@pytest.mark.parametrize("xy_loss", ["mse", "bce"])
def test_matches_darknet_loops(xy_loss):
    raw, boxes, labels, mask = _random_case(0)
    ref, stats = darknet_reference(raw, boxes, labels, mask, ignore_thresh=0.3, xy_loss=xy_loss)
    assert stats["ignored"] > 0 and stats["positives"] >= 5  # the case exercises both
    out = loss(raw, boxes, labels, mask, ignore_thresh=0.3, xy_loss=xy_loss)
    for k, v in ref.items():
        assert out[k] == pytest.approx(v, rel=2e-5, abs=1e-5), k


def test_giou_option():
    """box_loss="giou": s * (1 - GIoU) of the decoded box of each responsible slot, in place of xy and wh."""
    raw = zero_maps()
    raw[1][0, 3, 2, 1, :4] = [0.4, -0.3, 0.2, -0.1]
    out = loss(raw, [[[15, 22, 25, 34]]], [[2]], [[True]], box_loss="giou")
    assert "xy" not in out and "wh" not in out
    cx, cy = (2 + _sig(0.4)) * 8, (3 + _sig(-0.3)) * 8
    w, h = math.exp(0.2) * 9, math.exp(-0.1) * 11
    p = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    gt = (15, 22, 25, 34)
    iw = min(p[2], gt[2]) - max(p[0], gt[0])
    ih = min(p[3], gt[3]) - max(p[1], gt[1])
    inter = iw * ih
    union = w * h + 120 - inter
    hull = (max(p[2], gt[2]) - min(p[0], gt[0])) * (max(p[3], gt[3]) - min(p[1], gt[1]))
    giou = inter / union - (hull - union) / hull
    assert out["giou"] == pytest.approx((2 - (10 / 64) * (12 / 64)) * (1 - giou), rel=1e-5)


def test_padding_changes_nothing():
    raw, boxes, labels, mask = _random_case(1)
    base = loss(raw, boxes, labels, mask, ignore_thresh=0.3)
    # more padded rows, with garbage in them (also a copy of a real box, and an out-of-range label)
    extra = np.concatenate([boxes, boxes[:, :3] + 1.0, np.full((2, 2, 4), 7.0, np.float32)], 1)
    extra_labels = np.concatenate([labels, np.full((2, 5), C + 4)], 1)
    extra_mask = np.concatenate([mask, np.zeros((2, 5), bool)], 1)
    padded = loss(raw, extra, extra_labels, extra_mask, ignore_thresh=0.3)
    for k in base:
        assert padded[k] == pytest.approx(base[k], rel=1e-6, abs=1e-7), k
    # no boxes at all: only negatives
    empty = loss(raw, boxes, labels, np.zeros_like(mask), ignore_thresh=0.3)
    assert empty["obj"] == empty["cls"] == empty["xy"] == empty["wh"] == 0.0 and empty["noobj"] > 0


def test_compiled_once_for_any_number_of_boxes():
    traces = []

    @jax.jit
    def f(raw, boxes, labels, mask):
        traces.append(1)  # runs only when jax traces (compiles) the function
        return yolov3_loss(raw, boxes, labels, mask, anchors=ANCHORS, masks=MASKS, image_size=SIZE)["loss"]

    raw, boxes, labels, mask = _random_case(2)
    values = []
    for n in (0, 1, 3, 6):
        m = np.zeros_like(mask)
        m[:, :n] = True
        values.append(float(f([jnp.asarray(r) for r in raw], boxes, labels, m)))
    assert len(traces) == 1
    assert len(set(values)) == 4  # and the masks did change the loss
    grads = jax.jit(jax.grad(lambda r: yolov3_loss(r, boxes, labels, mask, anchors=ANCHORS, masks=MASKS,
                                           image_size=SIZE, box_loss="giou")["loss"]))([jnp.asarray(r) for r in raw])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_tiny_darknet_learns_one_image():
    import optax

    sections = darknet.parse_cfg(fixture_path("yolo/yolov3-mini.cfg"))
    model = darknet.Darknet(tuple(sections))
    kw = loss_config(model.yolo_specs())
    assert kw["masks"] == MASKS and kw["anchors"] == tuple((float(w), float(h)) for w, h in ANCHORS)
    x = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3))
    boxes = jnp.asarray([[[15.0, 22.0, 25.0, 34.0], [4.0, 10.0, 54.0, 60.0], [0.0, 0.0, 0.0, 0.0]]])
    labels, mask = jnp.asarray([[2, 0, 0]]), jnp.asarray([[True, True, False]])
    variables = model.init(jax.random.key(1), x)
    params, stats = variables["params"], variables["batch_stats"]
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, stats, opt_state):
        def objective(p):
            out, new = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            terms = yolov3_loss(out["raw"], boxes, labels, mask, image_size=(64, 64), **kw)
            return terms["loss"], (terms, new["batch_stats"])

        (value, (terms, stats)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, terms

    history = []
    for _ in range(12):
        params, stats, opt_state, terms = step(params, stats, opt_state)
        history.append({k: float(v) for k, v in terms.items()})
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], [h["loss"] for h in history]
    assert history[-1]["obj"] + history[-1]["cls"] < history[0]["obj"] + history[0]["cls"]
