"""`python -m jaxcv.sam` on a `jaxcv.convert` output of the SAM fixture (../shared/fixtures/sam: reduced encoder
192 x 4): a point prompt gives the masks and scores of `Predictor.predict`, `--auto` the generator's records; the
COCO RLE encoder agrees with pycocotools; bad arguments are errors that name the argument; the fine-tuning
model (jaxcv.tasks.promptable_segmentation) built from the conversion decodes a box as the reference."""

import json

import numpy as np
import pytest
from conftest import assert_close_rel, fixture_path, load_io, load_regenerable
from PIL import Image

from jaxcv.convert import converted_model, load_converted
from jaxcv.convert import main as convert_main
from jaxcv.sam import Predictor, apply_boxes
from jaxcv.sam.__main__ import coco_rle, main, mask_bbox

ENCODER = {"encoder_embed_dim": 192, "encoder_depth": 4, "encoder_num_heads": 3, "encoder_global_attn_indexes": [1, 3]}


@pytest.fixture(scope="module")
def io():
    return load_io("sam", "sam")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    """The fixture's state dict as safetensors, converted by `python -m jaxcv.convert`."""
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("sam_cli")
    save_file(load_regenerable("sam", "sam"), str(tmp / "sam.safetensors"))
    convert_main(["--arch", "segment_anything", "--weights", str(tmp / "sam.safetensors"), "--out",
                  str(tmp / "converted"), "--kwargs", json.dumps(ENCODER)])
    return str(tmp / "converted")


@pytest.fixture(scope="module")
def image_path(io, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sam_cli_image") / "image.png"
    Image.fromarray(io["image_uint8"]).save(path)
    return str(path)


def read_masks(out, result) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / m["file"])) for m in result["masks"]]) == 255


def check_records(out, result, masks: np.ndarray) -> None:
    """The JSON's RLE (decoded by pycocotools), area and bbox describe the PNG masks."""
    from pycocotools import mask as mask_utils

    assert Image.open(out / result["overlay"]).width >= masks.shape[2]
    for rec, mask in zip(result["masks"], masks, strict=True):
        rle = {"size": rec["segmentation"]["size"], "counts": rec["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        assert rec["area"] == int(mask.sum()) and rec["bbox"] == mask_bbox(mask)


def test_point_prompt_matches_predictor(converted, image_path, io, tmp_path):
    out = tmp_path / "out"
    result = main(["--weights", converted, "--image", image_path, "--points", "417,161,1", "--multimask",
                   "--out", str(out)])
    assert result == json.loads((out / "result.json").read_text())
    assert result["mode"] == "prompt" and (result["height"], result["width"]) == (471, 640)
    assert result["prompt"] == {"points": [[417.0, 161.0]], "labels": [1], "box": None, "multimask": True}

    predictor = Predictor(converted_model(converted), load_converted(converted))
    predictor.set_image(io["image_uint8"])
    masks, scores, _ = predictor.predict(io["case0_point_coords"], io["case0_point_labels"], multimask_output=True)
    png = read_masks(out, result)
    np.testing.assert_array_equal(png, masks)
    np.testing.assert_array_equal([m["score"] for m in result["masks"]], scores)
    assert result["best"] == int(np.argmax(scores))
    check_records(out, result, png)
    # And the reference's masks, up to pixels at round-off from the threshold (tests/test_sam.py checks those).
    ref = np.unpackbits(io["case0_masks_packed"], axis=-1, count=640).astype(bool)
    assert (png != ref).mean() <= 1e-3


def test_auto_matches_generator(converted, image_path, io, tmp_path):
    settings = json.loads(fixture_path("sam/sam.meta.json").read_text())["amg_settings"]
    out = tmp_path / "auto"
    result = main(["--weights", converted, "--image", image_path, "--auto", "--out", str(out),
                   "--points-per-side", str(settings["points_per_side"]),
                   "--pred-iou-thresh", str(settings["pred_iou_thresh"]),
                   "--stability-score-thresh", str(settings["stability_score_thresh"]),
                   "--box-nms-thresh", str(settings["box_nms_thresh"])])
    assert result["mode"] == "auto" and len(result["masks"]) == int(io["amg_num_masks"])
    png = read_masks(out, result)
    check_records(out, result, png)
    ref = np.unpackbits(io["amg_masks_packed"], axis=-1, count=640).astype(bool)
    assert (png != ref).mean() <= 1e-3
    for i, rec in enumerate(result["masks"]):
        assert rec["bbox"] == io["amg_bbox_xywh"][i].tolist()
        assert rec["point_coords"] == [io["amg_point_coords"][i].tolist()]
        assert abs(rec["score"] - io["amg_predicted_iou"][i]) <= 1e-4 and rec["score"] == rec["predicted_iou"]


def test_coco_rle_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    cases = [np.zeros((5, 7), bool), np.ones((5, 7), bool), rng.random((40, 33)) < 0.5,
             np.pad(np.ones((30, 20), bool), ((3, 1000), (2, 5)))]  # long runs: multi-group and negative deltas
    cases[2][0, 0] = True  # first pixel set: counts start with a zero-length run
    for mask in cases:
        ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco_rle(mask) == {"size": list(mask.shape), "counts": ref["counts"].decode()}


@pytest.mark.parametrize("prompt, files, message", [
    (["--points", "417,161,2"], {}, "argument --points: '417,161,2': label must be 1"),
    (["--points", "417;161"], {}, "argument --points: '417;161' is not x,y"),
    (["--box", "10,10,5,20"], {}, "argument --box: '10,10,5,20': need x2 > x1"),
    (["--points", "700,161,1"], {}, "argument --points: 700,161,1 lies outside the 640x471 image"),
    ([], {}, "give a prompt (--points and/or --box) or --auto"),
    (["--auto", "--box", "1,2,3,4"], {}, "--auto takes no prompts"),
    (["--points", "1,1"], {"--image": "missing.png"}, "missing.png does not exist"),
    (["--points", "1,1"], {"--weights": "notsam"}, "argument --weights: "),
    (["--points", "1,1"], {"--weights": "empty"}, "model.json not found"),
])
def test_errors_name_the_argument(prompt, files, message, image_path, tmp_path, capsys):
    (tmp_path / "notsam").mkdir()
    (tmp_path / "notsam" / "model.json").write_text(json.dumps({"arch": "resnet18", "model": "resnet18"}))
    (tmp_path / "empty").mkdir()
    paths = {"--weights": str(tmp_path / "empty"), "--image": image_path, "--out": str(tmp_path / "out"),
             **{k: str(tmp_path / v) for k, v in files.items()}}
    with pytest.raises(SystemExit) as exc:
        main([x for kv in paths.items() for x in kv] + prompt)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    if files.get("--weights") == "notsam":
        assert "holds 'resnet18', not SAM" in err
    if "--image" in files:
        assert "argument --image: " in err
    assert not (tmp_path / "out").exists()


def test_finetuning_model_from_the_conversion(converted, io):
    """jaxcv.tasks.promptable_segmentation takes architecture and PE matrix from the same conversion: its model
    (constant PE, no `buffers`) decodes the reference's box prompt (case 2) to the reference's outputs."""
    import jax
    import jax.numpy as jnp

    from jaxcv.tasks.promptable_segmentation import PromptableSam, read_converted_sam

    kwargs, pe = read_converted_sam(converted)
    model = PromptableSam(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}, pe_matrix=pe)
    params = load_converted(converted)["params"]
    box = apply_boxes(io["case2_box"], (471, 640), 1024).astype(np.float32).reshape(1, 1, 4)
    emb = io["image_embedding"].transpose(0, 2, 3, 1)
    low, iou = jax.jit(lambda p, e, b: model.apply({"params": p}, e, b, True, method=PromptableSam.decode_boxes))(
        params, jnp.asarray(emb), jnp.asarray(box))
    assert_close_rel(np.asarray(low)[0, 0], io["case2_low_res_masks"], 1e-4, "low-res logits")
    np.testing.assert_allclose(np.asarray(iou)[0, 0], io["case2_iou_predictions"], rtol=0, atol=1e-4)
