"""Prediction on video through one batched, jitted pipeline (`jaxcv.predict`): `--mode=predict` on a video
the test writes (annotated mp4 + JSON lines, `predict.stride` honoured, the same detections as the image
path on the decoded frames, one compilation for every image and frame), the `Predictor.stream` API, and
errors for missing or undecodable videos. The model is at its init: what is tested is the predict path."""

import copy
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_predict import save_initial_checkpoint, smoke_config

from jaxcv import modes
from jaxcv.data.shapes import SHAPE_NAMES, ShapesConfig, render_shapes
from jaxcv.predict import Predictor, resolve_inputs
from jaxcv.tasks import create_task

FRAMES, FPS, W, H = 12, 10.0, 96, 64  # non-square: boxes go back through the letterbox scale


def write_video(path: Path) -> None:
    """FRAMES frames of synthetic shapes (64 x 64) sliding across a W x H grey canvas, codec mp4v."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    assert writer.isOpened()
    for i in range(FRAMES):
        frame = np.full((H, W, 3), 90, np.uint8)
        x = (i * 3) % (W - 64)
        frame[:, x : x + 64] = render_shapes(ShapesConfig(image_size=64, min_size=16, max_size=40), 0, i)["image"]
        writer.write(frame[..., ::-1].copy())
    writer.release()


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame as OpenCV decodes it, uint8 RGB (mp4v is lossy: compare against these, not the drawings)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1].copy())
    cap.release()
    return frames


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A RetinaNet smoke workdir at step 0, keeping every detection (thresholds 0), and a video."""
    root = tmp_path_factory.mktemp("stream")
    c = smoke_config("shapes_retinanet", predict__score_thresh=0.0, postprocess__score_thresh=0.0,
                     predict__batch_size=4)
    save_initial_checkpoint(c, root / "run")
    write_video(root / "clip.mp4")
    return c, root


def copied(config):
    """The module's config, for a test to change."""
    return copy.deepcopy(config)


@pytest.mark.slow
def test_video_predict_writes_annotated_video_and_jsonl_equal_to_the_image_path(run, capsys):
    c, root = copied(run[0]), run[1]
    frames = decoded_frames(root / "clip.mp4")
    assert len(frames) == FRAMES
    stride = 2
    kept = list(range(0, FRAMES, stride))  # 6 frames: a batch of 4 and a padded one of 2
    # The same frames as PNG files, named so that sorted order reverses them: image batches differ from the
    # video's (rows land in other batch positions, with other neighbours and padding).
    (root / "frames").mkdir()
    for i in kept:
        Image.fromarray(frames[i]).save(root / "frames" / f"f{FRAMES - i:02d}.png")
    with c.unlocked():
        c.predict.inputs = f"{root / 'clip.mp4'}, {root / 'frames'}"
        c.predict.stride = stride
    out = modes.predict(c, root / "run")
    log = capsys.readouterr().out
    assert "1 compilation(s) for all inputs" in log, log
    assert "frames/s" in log, log

    cap = cv2.VideoCapture(str(out / "clip_pred.mp4"))
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (W, H)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS / stride)
    cap.release()
    drawn = decoded_frames(out / "clip_pred.mp4")
    assert len(drawn) == len(kept)
    assert np.abs(drawn[0].astype(int) - frames[0]).mean() > 1, "boxes are drawn on the frames"

    lines = [json.loads(s) for s in (out / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == kept
    assert [r["time"] for r in lines] == pytest.approx([i / FPS for i in kept])
    by_file: dict[str, list[dict]] = {}
    for r in json.loads((out / "detections.json").read_text()):
        by_file.setdefault(Path(r["file"]).name, []).append(r)
    assert sorted(by_file) == sorted(f"f{FRAMES - i:02d}.png" for i in kept)
    for r in lines:
        dets, ref = r["detections"], by_file[f"f{FRAMES - r['frame']:02d}.png"]
        assert dets and len(dets) == len(ref), r["frame"]
        assert [d["category_id"] for d in dets] == [d["category_id"] for d in ref]
        assert {d["class"] for d in dets} <= set(SHAPE_NAMES)
        np.testing.assert_allclose([d["score"] for d in dets], [d["score"] for d in ref], rtol=1e-5, atol=1e-7)
        xywh = np.asarray([d["box_xyxy"] for d in dets])
        xywh[:, 2:] -= xywh[:, :2]
        np.testing.assert_allclose(xywh, [d["bbox"] for d in ref], rtol=1e-5, atol=1e-3)
        assert (xywh[:, :2] >= 0).all() and (xywh[:, 0] + xywh[:, 2] <= W + 1e-3).all()
        assert (xywh[:, 1] + xywh[:, 3] <= H + 1e-3).all()
    for i in kept:
        assert Image.open(out / f"f{FRAMES - i:02d}_det.png").size == (W, H)


@pytest.mark.slow
def test_stream_api_yields_every_frame_with_one_compilation(run, tmp_path):
    c, root = run
    predictor = Predictor.from_workdir(c, root / "run", batch_size=5)  # 12 frames: 5 + 5 + 2 (padded)
    results = list(predictor.stream(root / "clip.mp4"))
    assert [r["frame"] for r in results] == list(range(FRAMES))
    for r in results:
        n = len(r["scores"])
        assert r["boxes"].shape == (n, 4) and r["labels"].shape == (n,) and len(r["class_names"]) == n
        assert r["image"].shape == r["drawn"].shape == (H, W, 3) and r["drawn"].dtype == np.uint8
    assert predictor.traces == 1 and predictor._fn._cache_size() == 1
    # The image path through the same compiled function gives the same numbers.
    again = [res for _, res in predictor.predict_images(r["image"] for r in results[::-1])][::-1]
    for r, s in zip(results, again, strict=True):
        np.testing.assert_allclose(r["boxes"], s["boxes"], rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(r["labels"], s["labels"])
    assert predictor.traces == 1 and predictor._fn._cache_size() == 1

    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        predictor.stream(missing)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        list(predictor.stream(bad))


def test_predict_inputs_mix_files_folders_globs_and_fail_naming_the_path(run, tmp_path):
    c, root = copied(run[0]), run[1]
    (tmp_path / "dir").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "dir" / name).write_bytes(b"")
    (tmp_path / "dir" / "v.MOV").write_bytes(b"")
    got = resolve_inputs(f"{tmp_path / 'dir'},{root / '*.mp4'}, 0 ,rtsp://cam/1")
    assert got.images == [str(tmp_path / "dir" / n) for n in ("a.jpg", "b.png")]
    assert got.videos == [str(tmp_path / "dir" / "v.MOV"), str(root / "clip.mp4"), 0, "rtsp://cam/1"]

    missing = tmp_path / "nowhere.mp4"
    with c.unlocked():
        c.predict.inputs = f"{root / 'clip.mp4'},{missing}"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        modes.predict(c, root / "run")
    bad = tmp_path / "bad.avi"
    bad.write_text("not a video")
    with c.unlocked():
        c.predict.inputs = str(bad)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        modes.predict(c, root / "run")


@pytest.mark.slow
def test_classification_video_predict(tmp_path):
    """Another task through the same path: a class caption per frame, top-5 probabilities per JSON line."""
    c = smoke_config("synthetic_classification", predict__batch_size=2)
    save_initial_checkpoint(c, tmp_path / "run")
    write_video(tmp_path / "clip.mp4")
    with c.unlocked():
        c.predict.inputs = str(tmp_path / "clip.mp4")
        c.predict.stride = 5  # frames 0, 5, 10: a batch of 2 and a padded one
    out = modes.predict(c, tmp_path / "run")
    assert len(decoded_frames(out / "clip_pred.mp4")) == 3
    lines = [json.loads(s) for s in (out / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 5, 10]
    names = list(create_task(c).source("train").class_names)
    for r in lines:
        probs = [t["prob"] for t in r["top5"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert r["class_name"] == r["top5"][0]["class"] == names[r["class"]] and r["score"] == probs[0]


def test_segmentation_postprocess_crops_the_letterbox_padding():
    """The eval transform puts a W x H frame at the top-left of S x S (longer side S): the mask back in the
    frame's pixels comes from that region only, resized NEAREST to H x W."""
    task = create_task(smoke_config("shapes_unet"))
    s = task.image_size
    frame = np.zeros((H, W, 3), np.uint8)
    x, meta = task.prepare_input(frame)
    assert x.shape == (s, s, 3)
    nh = round(H * s / W)
    pred = np.full((s, s), 2, np.int32)
    pred[:nh] = 1  # the image region; rows below are padding
    pred[:nh, : s // 2] = 3
    mask = task.postprocess({"pred": pred}, meta)["mask"]
    assert mask.shape == (H, W)
    assert set(np.unique(mask[:, : W // 2])) == {3} and set(np.unique(mask[:, W // 2 :])) == {1}
