"""SAM v1 parity with segment_anything (../shared/fixtures/sam: reduced encoder 192 x 4, 3 heads, global [1, 3];
the prompt encoder and mask decoder as in every SAM): preprocessing, image embedding, prompt embeddings, decoder
outputs, masks; the strict importer; the registries. The encoder runs once per module (module fixture)."""

import jax
import numpy as np
import pytest
from conftest import assert_close_rel, load_io, load_regenerable

import jaxcv.models.sam as sam_models
from jaxcv.models import MODELS
from jaxcv.models.backbones import IMPORTERS
from jaxcv.models.sam import from_segment_anything
from jaxcv.models.sam.image_encoder import get_rel_pos, linear_resize_matrix
from jaxcv.models.sam.sam import init_variables
from jaxcv.sam import Predictor, apply_coords, postprocess_matrices, preprocess_shape, upscale_logits

ENCODER = {"encoder_embed_dim": 192, "encoder_depth": 4, "encoder_num_heads": 3, "encoder_global_attn_indexes": [1, 3]}
CASES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def io():
    return load_io("sam", "sam")


@pytest.fixture(scope="module")
def state_dict():
    return load_regenerable("sam", "sam")


@pytest.fixture(scope="module")
def predictor(state_dict, io):
    module, variables = from_segment_anything(state_dict, **ENCODER)
    p = Predictor(module, variables)
    p.set_image(io["image_uint8"])
    return p


def case_prompts(io, k: int) -> dict:
    def get(name):
        return io.get(f"case{k}_{name}")

    mask = io["case0_low_res_masks"][int(io["case3_mask_input_index"])][None] if k == 3 else None
    return {"point_coords": get("point_coords"), "point_labels": get("point_labels"), "box": get("box"),
            "mask_input": mask, "multimask_output": bool(get("multimask_output"))}


def reference_masks(io, k: int) -> np.ndarray:
    w = io["image_uint8"].shape[1]
    return np.unpackbits(io[f"case{k}_masks_packed"], axis=-1, count=w).astype(bool)


def check_masks(masks: np.ndarray, ref: np.ndarray, logits: np.ndarray, ref_logits: np.ndarray, name: str) -> None:
    """>= 99.9 % of pixels agree, and every disagreeing pixel is within 1e-3 of the threshold 0 both in our
    logits and in the reference's (its low-res logits through our postprocessing)."""
    assert masks.shape == ref.shape and masks.dtype == bool, (name, masks.shape, masks.dtype)
    np.testing.assert_array_equal(masks, logits > 0.0, err_msg=f"{name}: masks are not logits > 0")
    wrong = masks != ref
    assert wrong.mean() <= 1e-3, f"{name}: {wrong.sum()} of {wrong.size} mask pixels differ"
    if wrong.any():
        worst = max(np.abs(logits[wrong]).max(), np.abs(ref_logits[wrong]).max())
        assert worst <= 1e-3, f"{name}: a differing pixel has |logit| {worst:.3g} > 1e-3"
    # The reference's own logits threshold to its masks, except possibly within round-off of 0.
    ref_wrong = (ref_logits > 0.0) != ref
    assert ref_wrong.sum() == 0 or np.abs(ref_logits[ref_wrong]).max() <= 1e-3, name


def test_preprocess_shape_rounds_half_up_and_input_matches(predictor, io):
    assert preprocess_shape(471, 640, 1024) == (754, 1024)  # 753.6 -> 754, not the floor
    assert preprocess_shape(100, 300, 1024) == (341, 1024)  # 341.33
    assert preprocess_shape(300, 100, 1024) == (1024, 341)
    assert predictor.input_size == tuple(io["input_hw"]) and predictor.original_size == (471, 640)
    # Pillow bilinear resize + (x - mean) / std in float32 + zero padding: bit-identical to the reference.
    np.testing.assert_array_equal(predictor.input_image.transpose(0, 3, 1, 2), io["input_nchw"])


def test_image_embedding(predictor, io):
    emb = np.asarray(predictor.features)
    assert emb.shape == (1, 64, 64, 256)
    assert_close_rel(emb.transpose(0, 3, 1, 2), io["image_embedding"], 1e-4, "image_embedding")


@pytest.mark.parametrize("k", CASES)
def test_prompt_case(predictor, io, k):
    prompts = case_prompts(io, k)
    masks, iou, low_res, det = predictor.predict(**prompts, details=True)
    c = 3 if prompts["multimask_output"] else 1
    assert masks.shape == (c, 471, 640) and iou.shape == (c,) and low_res.shape == (c, 256, 256)
    assert_close_rel(det["sparse_embeddings"], io[f"case{k}_sparse_embeddings"], 1e-4, f"case{k} sparse")
    assert_close_rel(det["dense_embeddings"].transpose(0, 3, 1, 2), io[f"case{k}_dense_embeddings"], 1e-4,
                     f"case{k} dense")
    assert_close_rel(det["masks_all"], io[f"case{k}_decoder_masks_all"], 1e-4, f"case{k} decoder masks")
    assert_close_rel(det["iou_all"], io[f"case{k}_decoder_iou_all"], 1e-4, f"case{k} decoder iou")
    assert_close_rel(low_res, io[f"case{k}_low_res_masks"], 1e-4, f"case{k} low_res_logits")
    np.testing.assert_allclose(iou, io[f"case{k}_iou_predictions"], rtol=0, atol=1e-4)
    ref_logits = np.asarray(upscale_logits(io[f"case{k}_low_res_masks"], *predictor.postprocess_maps))
    check_masks(masks, reference_masks(io, k), det["logits"][0], ref_logits, f"case{k}")


def test_predict_batch_equals_single_prompts(predictor, io):
    """Two point prompts in one jitted call: element 0 is case 0, element 1 the point of case 3 (no mask)."""
    points = np.stack([io["case0_point_coords"], io["case3_point_coords"]])
    labels = np.stack([io["case0_point_labels"], io["case3_point_labels"]])
    masks, iou, low_res = predictor.predict_batch(points, labels, multimask_output=True)
    masks, iou, low_res = np.asarray(masks), np.asarray(iou), np.asarray(low_res)
    assert masks.shape == (2, 3, 471, 640) and iou.shape == (2, 3) and low_res.shape == (2, 3, 256, 256)
    assert_close_rel(low_res[0], io["case0_low_res_masks"], 1e-4, "batched low_res_logits")
    np.testing.assert_allclose(iou[0], io["case0_iou_predictions"], rtol=0, atol=1e-4)
    ref_logits = np.asarray(upscale_logits(io["case0_low_res_masks"], *predictor.postprocess_maps))
    logits = np.asarray(upscale_logits(low_res[0], *predictor.postprocess_maps))
    check_masks(masks[0], reference_masks(io, 0), logits, ref_logits, "batched case0")
    # Element 1 is a different prompt: the batch does not mix prompts.
    assert np.abs(low_res[1] - low_res[0]).max() > 1e-2


def test_postprocess_is_torch_bilinear():
    """torch F.interpolate(linear, align_corners=False) of a ramp 0..3 to 7 samples: source (i + 0.5) * 4 / 7 - 0.5,
    clamped to [0, 3] (no antialias, edge samples repeat the border)."""
    m = linear_resize_matrix(4, 7)
    expected = np.clip((np.arange(7) + 0.5) * 4 / 7 - 0.5, 0, 3)
    np.testing.assert_allclose(m @ np.arange(4.0), expected, atol=1e-12)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    # Upscale 256 -> 1024, crop 754 rows, downscale to 471: composed per axis.
    mh, mw = postprocess_matrices(256, 1024, (754, 1024), (471, 640))
    assert mh.shape == (471, 256) and mw.shape == (640, 256)
    up = linear_resize_matrix(256, 1024)
    np.testing.assert_allclose(mh, linear_resize_matrix(754, 471) @ up[:754], atol=1e-6)


def test_rel_pos_lookup_and_interpolation():
    table = np.random.default_rng(0).normal(size=(27, 4)).astype(np.float32)
    r = np.asarray(get_rel_pos(14, 14, table))
    i, j = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
    np.testing.assert_array_equal(r, table[i - j + 13])  # Rh[i, j] = table[i - j + S - 1]
    # A 27-row table used on a 20-token axis is first resized linearly to 39 rows.
    r = np.asarray(get_rel_pos(20, 20, table))
    resized = linear_resize_matrix(27, 39) @ table
    i, j = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    np.testing.assert_allclose(r, resized[i - j + 19], rtol=1e-6, atol=1e-6)


def test_apply_coords_float64():
    c = apply_coords(np.array([[417, 161]]), (471, 640), 1024)
    assert c.dtype == np.float64
    np.testing.assert_array_equal(c, [[417 * (1024 / 640), 161 * (754 / 471)]])


def test_importer_is_strict(state_dict):
    sd = dict(state_dict)
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra.weight"] = np.zeros(3, np.float32)
    sd["image_encoder.blocks.0.attn.rel_pos_h"] = np.zeros((127, 64), np.float32)  # a global block's table
    with pytest.raises(ValueError) as err:
        from_segment_anything(sd, **ENCODER)
    msg = str(err.value)
    assert "missing keys (1): mask_decoder.iou_token.weight (1, 256)" in msg
    assert "unexpected keys (1): mask_decoder.extra.weight" in msg
    assert "image_encoder.blocks.0.attn.rel_pos_h: got (127, 64), expected (27, 64)" in msg
    # Wrong architecture arguments are shape / key errors too (ViT-B defaults on the reduced weights).
    with pytest.raises(ValueError, match="missing keys"):
        from_segment_anything(state_dict)


def test_registries_and_variant_dims():
    assert IMPORTERS.get("segment_anything") is from_segment_anything
    for name in ("sam", "sam_vit_b", "sam_vit_l", "sam_vit_h"):
        assert name in MODELS
    h = MODELS.get("sam_vit_h")()
    assert (h.encoder_embed_dim, h.encoder_depth, h.encoder_num_heads) == (1280, 32, 16)
    assert tuple(h.encoder_global_attn_indexes) == (7, 15, 23, 31)
    lm = sam_models.sam_vit_l()
    assert (lm.encoder_embed_dim, lm.encoder_depth, lm.encoder_num_heads) == (1024, 24, 16)
    assert tuple(lm.encoder_global_attn_indexes) == (5, 11, 17, 23)
    params = init_variables(MODELS.get("sam_vit_b")())["params"]
    enc = params["image_encoder"]
    assert enc["pos_embed"].shape == (1, 64, 64, 768)
    assert enc["blocks_0"]["attn"]["qkv"]["kernel"].shape == (768, 2304)
    assert enc["blocks_0"]["attn"]["rel_pos_h"].shape == (27, 64)  # windowed: 2 * 14 - 1
    assert enc["blocks_2"]["attn"]["rel_pos_w"].shape == (127, 64)  # global: 2 * 64 - 1
    assert len([k for k in enc if k.startswith("blocks_")]) == 12
    assert params["mask_decoder"]["output_upscaling_0"]["kernel"].shape == (2, 2, 64, 256)
    assert jax.tree.leaves(init_variables(MODELS.get("sam_vit_b")())["buffers"])[0].shape == (2, 128)
