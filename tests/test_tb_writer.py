"""TensorBoard event files without TensorFlow (jaxcv.logs): written, then read back with tensorboard's reader."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from jaxcv.logs import MetricWriter, TensorBoardWriter

ROOT = Path(__file__).resolve().parents[1]


def load(logdir: Path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return acc


def scalars(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def images(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, int, int, list[np.ndarray]]]:
    """(step, width, height, decoded images) of each event of an images-plugin tag."""
    out = []
    for e in acc.Tensors(tag):
        w, h, *pngs = tensor_util.make_ndarray(e.tensor_proto).tolist()
        out.append((e.step, int(w), int(h), [np.asarray(Image.open(io.BytesIO(p))) for p in pngs]))
    return out


def hparams(acc: ea.EventAccumulator) -> dict:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_scalars_images_hparams_read_back(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # [H, W, C] uint8
    gray = rng.random((2, 4, 6, 1)).astype(np.float32)  # [N, H, W, 1] float in [0, 1]
    w = TensorBoardWriter(tmp_path)
    w.write_hparams({"lr": 0.1, "model.depth": 18, "aug": True, "name": "r18", "sizes": [1, 2], "none": None})
    w.write_scalars(1, {"train/loss": 2.5, "train/acc": 0.25})
    w.write_scalars(3, {"train/loss": 1.25})
    w.write_images(3, {"rgb": rgb, "gray": gray})
    w.flush()
    w.close()
    assert w.path.name.startswith("events.out.tfevents.")

    acc = load(tmp_path)
    assert sorted(acc.Tags()["tensors"]) == ["_hparams_/session_start_info", "gray", "rgb", "train/acc", "train/loss"]
    assert scalars(acc, "train/loss") == [(1, 2.5), (3, 1.25)]
    assert scalars(acc, "train/acc") == [(1, 0.25)]
    assert acc.SummaryMetadata("train/loss").plugin_data.plugin_name == "scalars"
    assert acc.SummaryMetadata("rgb").plugin_data.plugin_name == "images"

    [(step, width, height, [back])] = images(acc, "rgb")
    assert (step, width, height) == (3, 7, 5)
    np.testing.assert_array_equal(back, rgb)
    [(step, width, height, backs)] = images(acc, "gray")
    assert (step, width, height, len(backs)) == (3, 6, 4, 2)
    for back, g in zip(backs, gray, strict=True):
        np.testing.assert_array_equal(back, np.round(g[..., 0] * 255).astype(np.uint8))

    assert hparams(acc) == {"lr": 0.1, "model.depth": 18.0, "aug": True, "name": "r18", "sizes": "[1, 2]",
                            "none": "null"}


def test_metric_writer_logs_config_scalars_and_eval_pictures(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.5}}))
    (tmp_path / "eval").mkdir()
    w = MetricWriter(tmp_path, tensorboard=True)
    w.write(10, "train", {"loss": 1.0, "bad": float("nan"), "note": "text"})
    w.write(20, "eval", {"AP": 0.5})
    picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    Image.fromarray(picture).save(tmp_path / "eval" / "predictions.png")  # what the evaluator writes
    (tmp_path / "eval" / "broken.png").write_bytes(b"not a png")  # left out, with a warning
    w.write_image_files(20, tmp_path / "eval", "eval")  # as the trainer does after `evaluator.save`
    w.close()

    acc = load(tmp_path / "tb")
    assert sorted(acc.Tags()["tensors"]) == ["_hparams_/session_start_info", "eval/AP", "eval/predictions",
                                             "train/loss"]  # NaN and text stay out of TensorBoard
    assert scalars(acc, "train/loss") == [(10, 1.0)]
    assert scalars(acc, "eval/AP") == [(20, 0.5)]
    [(step, width, height, [back])] = images(acc, "eval/predictions")
    assert (step, width, height) == (20, 3, 2)
    np.testing.assert_array_equal(back, picture)
    assert hparams(acc) == {"batch_size": 8.0, "optimizer.name": "sgd", "optimizer.lr": 0.5}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 10 and np.isnan(records[0]["bad"]) and "note" not in records[0]


def test_train_and_tensorboard_do_not_import_tensorflow(tmp_path: Path):
    """`import jaxcv.train` and writing TensorBoard events leave TensorFlow unimported, even where it is
    installed (the `tfds-build` extra)."""
    code = (
        "import sys, jaxcv.train\n"
        "from jaxcv.logs import MetricWriter\n"
        f"w = MetricWriter({str(tmp_path)!r}, tensorboard=True)\n"
        "w.write(1, 'train', {'loss': 1.0})\n"
        "w.close()\n"
        "assert w.tb is not None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
