"""AutomaticMaskGenerator parity with segment_anything's SamAutomaticMaskGenerator on the fixture image
(../shared/fixtures/sam, settings from sam.meta.json: 4 x 4 points, thresholds 0, NMS 0.7, no crops): the 48
candidates before NMS, the NMS result and the output records; plus the helpers it is built from."""

import json

import numpy as np
import pytest
from conftest import assert_close_rel, fixture_path, load_io, load_regenerable

from jaxcv.models.sam import from_segment_anything
from jaxcv.sam.amg import (
    AutomaticMaskGenerator,
    box_nms,
    build_point_grid,
    generate_crop_boxes,
    mask_to_rle,
    masks_to_boxes,
    remove_small_regions,
)

ENCODER = {"encoder_embed_dim": 192, "encoder_depth": 4, "encoder_num_heads": 3, "encoder_global_attn_indexes": [1, 3]}


@pytest.fixture(scope="module")
def io():
    return load_io("sam", "sam")


@pytest.fixture(scope="module")
def generated(io):
    """(generator, records, per-crop details) of one run on the fixture image (the encoder runs once)."""
    settings = json.loads(fixture_path("sam/sam.meta.json").read_text())["amg_settings"]
    module, variables = from_segment_anything(load_regenerable("sam", "sam"), **ENCODER)
    gen = AutomaticMaskGenerator(module, variables, **settings)
    records, details = gen.generate_details(io["image_uint8"])
    return gen, records, details


def test_candidates_and_nms(generated, io):
    _, _, details = generated
    assert len(details) == 1  # crop_n_layers = 0: the whole image only
    d = details[0]
    assert d["crop_box"] == [0, 0, 640, 471]
    np.testing.assert_array_equal(d["points"], io["amg_candidate_points"])  # point-major, 3 masks per point
    np.testing.assert_array_equal(d["boxes"], io["amg_candidate_boxes_xyxy"])
    np.testing.assert_allclose(d["iou_preds"], io["amg_candidate_iou_preds"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(d["stability_score"], io["amg_candidate_stability_score"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(d["nms_keep"], io["amg_nms_keep"])


def test_records(generated, io):
    gen, records, _ = generated
    assert len(records) == int(io["amg_num_masks"])
    ref_masks = np.unpackbits(io["amg_masks_packed"], axis=-1, count=io["image_uint8"].shape[1]).astype(bool)
    for i, rec in enumerate(records):
        assert rec["bbox"] == io["amg_bbox_xywh"][i].tolist()
        assert rec["crop_box"] == io["amg_crop_box_xywh"][i].tolist()
        assert rec["point_coords"] == [io["amg_point_coords"][i].tolist()]
        assert abs(rec["predicted_iou"] - io["amg_predicted_iou"][i]) <= 1e-4
        assert abs(rec["stability_score"] - io["amg_stability_score"][i]) <= 1e-4
        mask = rec["segmentation"]
        assert mask.dtype == bool and mask.shape == ref_masks[i].shape
        wrong = mask != ref_masks[i]
        assert wrong.mean() <= 1e-3, f"record {i}: {wrong.sum()} pixels differ"
        assert abs(rec["area"] - int(io["amg_area"][i])) <= wrong.sum()
        if wrong.any():  # every differing pixel lies within round-off of the threshold
            k = int(io["amg_nms_keep"][i])
            _, _, _, det = gen.predictor.predict(np.asarray(rec["point_coords"]), np.array([1]), details=True)
            logits = det["logits"][0, k % 3]
            np.testing.assert_array_equal(logits > 0, mask)  # this record is that point's mask k % 3
            assert np.abs(logits[wrong]).max() <= 1e-3
            assert_close_rel(det["iou_all"][0, 1 + k % 3], io["amg_predicted_iou"][i], 1e-4, "record iou")


def test_point_grid_and_crop_boxes():
    grid = build_point_grid(2)
    np.testing.assert_array_equal(grid, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])  # y outer
    boxes, layers = generate_crop_boxes((471, 640), 1, 512 / 1500)
    # overlap int(0.3413 * 471) = 160; crop 400 x 316; x0 in (0, 240), y0 in (0, 156), x outer.
    assert boxes == [[0, 0, 640, 471], [0, 0, 400, 316], [0, 156, 400, 471], [240, 0, 640, 316],
                     [240, 156, 640, 471]]
    assert layers == [0, 1, 1, 1, 1]


def test_mask_helpers():
    masks = np.zeros((3, 5, 6), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    boxes = np.asarray(masks_to_boxes(masks))
    np.testing.assert_array_equal(boxes, [[2, 1, 4, 2], [0, 4, 0, 4], [0, 0, 0, 0]])  # inclusive; empty -> 0
    assert mask_to_rle(np.array([[0, 1], [1, 1]], bool))["counts"] == [1, 3]  # column-major
    assert mask_to_rle(np.array([[1, 0], [0, 0]], bool))["counts"] == [0, 1, 3]  # starts with zeros
    m = np.zeros((8, 8), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False  # a 1-pixel hole
    m[7, 6:8] = True  # a 2-pixel island
    filled, changed = remove_small_regions(m, 3, "holes")
    assert changed and filled[3, 3] and filled[7, 6]
    cleaned, changed = remove_small_regions(filled, 3, "islands")
    assert changed and not cleaned[7, 6:8].any() and cleaned[1:6, 1:6].all()
    # torchvision nms: decreasing score, IoU > threshold suppressed.
    keep = box_nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32),
                   np.array([0.5, 0.9, 0.1], np.float32), 0.7)
    np.testing.assert_array_equal(keep, [1, 2])
