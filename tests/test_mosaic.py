"""YOLO mosaic (jaxcv/data/mosaic.py): the detection transform's output format, determinism given the rng, and
boxes that stay on their objects through the mosaic, the affine, clipping and the flip."""

import numpy as np
import pytest

from jaxcv.data.base import DataError, denormalize
from jaxcv.data.detection import make_detection_transform
from jaxcv.data.mosaic import make_mosaic_transform

S = 64


class Rectangles:
    """Images of varied sizes: black with white filled rectangles, each rectangle its box (xyxy, whole pixels)."""

    num_classes = 2
    class_names = ["a", "b"]

    def __init__(self, n: int = 6, bad: tuple[int, ...] = ()):
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i in self.bad:
            raise DataError(f"cannot read image {i}.png")
        rng = np.random.default_rng(i)
        h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        image = np.zeros((h, w, 3), np.uint8)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            image[y0 : y0 + bh, x0 : x0 + bw] = 255
            boxes.append([x0, y0, x0 + bw, y0 + bh])
        return {"image": image, "boxes": np.asarray(boxes, np.float32), "labels": np.arange(len(boxes)) % 2,
                "image_id": i}


def test_output_like_the_detection_transform_and_deterministic():
    source = Rectangles()
    mosaic = make_mosaic_transform(source, S, 16)
    plain = make_detection_transform(S, 16, True)
    a = mosaic(source[0], np.random.default_rng([0, 1, 2]))
    ref = plain(source[0], np.random.default_rng(0))
    assert set(a) == set(ref)
    for k in ref:
        assert np.shape(a[k]) == np.shape(ref[k]) and np.asarray(a[k]).dtype == np.asarray(ref[k]).dtype, k
    b = mosaic(source[0], np.random.default_rng([0, 1, 2]))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = mosaic(source[0], np.random.default_rng([0, 1, 3]))
    assert not np.array_equal(a["image"], c["image"])
    assert a["box_mask"].sum() > len(source[0]["boxes"]) or c["box_mask"].sum() > len(source[0]["boxes"])


@pytest.mark.parametrize("prob", [1.0, 0.0])
def test_boxes_stay_on_their_objects(prob):
    """Without colour jitter and with every visible box kept, each bright pixel lies in some box (1 px of
    bilinear blur allowed) and each box's interior is bright: boxes and pixels moved together."""
    source = Rectangles(bad=(5,))  # an unreadable partner is replaced by the item itself
    transform = make_mosaic_transform(source, S, 32, prob=prob, hsv=(0, 0, 0), min_box_size=0.0, area_thr=0.0)
    kept = 0
    for seed in range(12):
        ex = transform(source[seed % 5], np.random.default_rng(seed))
        bright = denormalize(ex["image"])[..., 0] > 128
        boxes = ex["boxes"][ex["box_mask"]]
        kept += len(boxes)
        ys, xs = np.nonzero(bright)
        inside = np.zeros(len(xs), bool)
        for x1, y1, x2, y2 in boxes:
            inside |= (xs + 0.5 >= x1 - 1) & (xs + 0.5 <= x2 + 1) & (ys + 0.5 >= y1 - 1) & (ys + 0.5 <= y2 + 1)
            ix1, iy1, ix2, iy2 = int(np.ceil(x1)) + 1, int(np.ceil(y1)) + 1, int(x2) - 1, int(y2) - 1
            if ix2 > ix1 and iy2 > iy1:
                assert bright[iy1:iy2, ix1:ix2].mean() > 0.99, (seed, (x1, y1, x2, y2))
        assert inside.all(), f"seed {seed}: {np.sum(~inside)} object pixels outside every box"
    assert kept > 12


def test_small_and_cut_boxes_are_dropped():
    source = Rectangles()
    transform = make_mosaic_transform(source, S, 32, scale=(0.25, 0.25), hsv=(0, 0, 0), min_box_size=3.0)
    for seed in range(6):
        ex = transform(source[seed], np.random.default_rng(seed))
        boxes = ex["boxes"][ex["box_mask"]]
        assert ((boxes[:, 2:] - boxes[:, :2]) > 3.0).all()
        assert (boxes >= 0).all() and (boxes <= S).all()
    with pytest.raises(ValueError, match="prob"):
        make_mosaic_transform(source, S, 8, prob=1.5)
