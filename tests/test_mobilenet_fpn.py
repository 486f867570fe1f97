"""RetinaNet on torchvision's MobileNetV3-Large-FPN (`_mobilenet_extractor(mobilenet_v3_large, fpn=True)`, the
backbone of `fasterrcnn_mobilenet_v3_large_fpn`): the stages it reads, the FPN and its max-pool level, the anchors,
parameter counts derived from torchvision's definition, a forward pass and a short training run of
`configs/shapes_retinanet.py:mobilenet_v3_fpn`.

torch is not needed: the constants below are derived by hand from torchvision's definitions and cross-checked
against torchvision's published `num_params` (see `test_param_counts_match_torchvision`).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv import train
from jaxcv.config import load_config_file
from jaxcv.logs import read_metrics
from jaxcv.models import create_model
from jaxcv.models.backbones import create_backbone
from jaxcv.ops.anchors import AnchorConfig, generate_anchors
from jaxcv.tasks import create_task

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes_retinanet.py"
TV = dict(backbone="mobilenet_v3_large", backbone_kwargs={"stage_outputs": True}, fpn_levels=("stage4", "stage5"),
          extra_blocks="maxpool")

# torchvision `stage_indices` = [0] + [i for i, b in enumerate(features) if b._is_cn] + [len(features) - 1]:
# features index, stride and `out_channels` of each (the `_is_cn` blocks are the stride-2 rows of the conf table).
STAGES = {
    "mobilenet_v3_large": [(0, 2, 16), (2, 4, 24), (4, 8, 40), (7, 16, 80), (13, 32, 160), (16, 32, 960)],
    "mobilenet_v3_small": [(0, 2, 16), (1, 4, 16), (2, 8, 24), (4, 16, 40), (9, 32, 96), (12, 32, 576)],
}
# torchvision mobilenet_v3_large: num_params 5,483,032 minus classifier Linear(960, 1280) and Linear(1280, 1000).
BACKBONE_PARAMS = 5_483_032 - (960 * 1280 + 1280) - (1280 * 1000 + 1000)  # 2,971,952 (BatchNorm affine included)
# FeaturePyramidNetwork([160, 960], 256): 1x1 laterals and 3x3 outputs, with bias; LastLevelMaxPool has none.
FPN_PARAMS = (160 + 960) * 256 + 2 * 256 + 2 * (9 * 256 * 256 + 256)  # 1,467,392
# fasterrcnn_mobilenet_v3_large_fpn's published num_params (torchvision FasterRCNN_MobileNet_V3_Large_FPN_Weights).
FASTERRCNN_PARAMS = 19_386_354


def _shapes(module, size=128):
    """(variables, outputs) as shapes: one trace, nothing compiled."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x), x)
    return variables, out


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch", sorted(STAGES))
def test_stages_are_torchvision_stage_indices(arch: str) -> None:
    body = create_backbone(arch, stage_outputs=True)
    assert body._stages() == STAGES[arch]
    info = body.stage_info()
    assert list(info) == [f"stage{k}" for k in range(6)]
    _, out = _shapes(body, 96)
    for name, level in info.items():
        assert out[name].shape == (1, 96 // level.stride, 96 // level.stride, level.channels), name
    assert create_backbone(arch).stage_info() == {}  # the default declares no stages and returns none
    if arch == "mobilenet_v3_large":
        assert not any(k.startswith("stage") for k in _shapes(create_backbone(arch), 64)[1])


def test_dilated_stages_stay_at_stride_16() -> None:
    model = create_model("retinanet", num_classes=2, num_anchors=15, fpn_channels=32,
                         **{**TV, "backbone_kwargs": {"stage_outputs": True, "dilated": True}})
    assert model.pyramid_levels() == (4, 4, 5)
    _, out = _shapes(model)
    assert [f.shape[1:] for f in out["features"]] == [(8, 8, 32), (8, 8, 32), (4, 4, 32)]


def test_structure_and_param_counts_match_torchvision() -> None:
    model = create_model("retinanet", num_classes=91, num_anchors=15, **TV)  # torchvision's sizes
    assert model.pyramid_levels() == (5, 5, 6)  # two stride-32 maps, then the max-pool level at 64
    variables, out = _shapes(model)
    assert [f.shape for f in out["features"]] == [(1, 4, 4, 256), (1, 4, 4, 256), (1, 2, 2, 256)]
    params = variables["params"]
    fpn = params["fpn"]
    assert sorted(fpn) == ["inner_blocks_0", "inner_blocks_1", "layer_blocks_0", "layer_blocks_1"]  # no P6/P7
    assert fpn["inner_blocks_0"]["kernel"].shape == (1, 1, 160, 256)
    assert fpn["inner_blocks_1"]["kernel"].shape == (1, 1, 960, 256)
    assert out["cls_logits"].shape == (1, (16 + 16 + 4) * 15, 91)
    assert create_model("retinanet").pyramid_levels() == (3, 4, 5, 6, 7)  # the default pyramid is unchanged
    assert _count(params["backbone"]) == BACKBONE_PARAMS
    assert _count(fpn) == FPN_PARAMS
    # Cross-check with the published Faster R-CNN count: its FrozenBatchNorm2d affine terms are buffers, not
    # parameters; RPNHead(256, 15) is a 3x3 conv and 1x1 convs to 15 logits and 60 deltas; TwoMLPHead(256 * 7 * 7,
    # 1024) and FastRCNNPredictor(1024, 91) are Linear layers.
    bn_affine = sum(x.size for path, x in jax.tree_util.tree_flatten_with_path(params["backbone"])[0]
                    if path[-1].key == "scale" or (path[-1].key == "bias" and path[-2].key.endswith("_1")))
    rpn = (9 * 256 * 256 + 256) + (256 * 15 + 15) + (256 * 60 + 60)
    box_head = (256 * 7 * 7 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 91 + 91) + (1024 * 364 + 364)
    assert bn_affine == 2 * 12_200  # BatchNorm channels of features: stem, blocks, last conv
    assert BACKBONE_PARAMS - bn_affine + FPN_PARAMS + rpn + box_head == FASTERRCNN_PARAMS


def test_anchors_are_torchvision_mobilenet_anchors() -> None:
    """AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3): per location, ratio-major, each
    size; centres at i * stride with stride = image // feature size (32, 32, 64 here)."""
    cfg = AnchorConfig(levels=(5, 5, 6), sizes=(32.0,) * 3, scales=(1.0, 2.0, 4.0, 8.0, 16.0))
    anchors, per_level = generate_anchors((128, 128), cfg)
    assert cfg.num_anchors_per_location == 15 and per_level == [16 * 15, 16 * 15, 4 * 15]
    h = np.sqrt(np.float32([0.5, 1.0, 2.0]))[:, None] * np.float32([32, 64, 128, 256, 512])[None]
    w = np.float32([32, 64, 128, 256, 512])[None] / np.sqrt(np.float32([0.5, 1.0, 2.0]))[:, None]
    base = np.round(np.stack([-w, -h, w, h], -1).reshape(-1, 4) / 2)
    np.testing.assert_array_equal(anchors[:15], base)
    np.testing.assert_array_equal(anchors[15:30], base + [32, 0, 32, 0])  # next location of the first level
    np.testing.assert_array_equal(anchors[480 + 15:480 + 30], base + [64, 0, 64, 0])  # the stride-64 level


def test_config_head_follows_the_pyramid() -> None:
    config = load_config_file(f"{CONFIG}:mobilenet_v3_fpn,smoke")
    task = create_task(config)
    task.validate()
    assert task.head.num_anchors_per_level == [240, 240, 60] and task.model_kwargs()["num_anchors"] == 15
    bad = load_config_file(f"{CONFIG}:mobilenet_v3_fpn,smoke", {"anchors.levels": (4, 5, 6)})
    with pytest.raises(ValueError, match=r"anchors\.levels=\(4, 5, 6\).*levels \(5, 5, 6\)"):
        create_task(bad).validate()
    with pytest.raises(ValueError, match=r"fpn_levels wants \['stage4', 'stage5'\].*stage_outputs"):
        create_model("retinanet", **{**TV, "backbone_kwargs": {}}).pyramid_levels()


def _random_variables(shapes, seed: int = 0):
    """Variables of the shapes `shapes` without compiling an init (the init's random-number code is what takes
    long to compile): He-normal kernels, zero biases and means, unit scales and variances."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf in ("scale", "var"):
            return np.ones(s.shape, np.float32)
        if leaf in ("bias", "mean"):
            return np.zeros(s.shape, np.float32)
        return (rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_forward_at_128px_reduced_width() -> None:
    model = create_model("retinanet", num_classes=3, num_anchors=15, fpn_channels=32,
                         **{**TV, "backbone_kwargs": {"stage_outputs": True, "width_mult": 0.5}})
    x = np.random.default_rng(1).normal(size=(2, 128, 128, 3)).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert shapes["params"]["fpn"]["inner_blocks_0"]["kernel"].shape == (1, 1, 80, 32)  # 160 * 0.5
    out = jax.jit(model.apply)(_random_variables(shapes), x)
    p4, p5, pool = out["features"]
    assert p4.shape == p5.shape == (2, 4, 4, 32) and pool.shape == (2, 2, 2, 32)
    np.testing.assert_array_equal(pool, p5[:, ::2, ::2])  # max_pool2d(kernel 1, stride 2)
    assert out["cls_logits"].shape == (2, 540, 3) and out["bbox_regression"].shape == (2, 540, 4)
    assert bool(jnp.all(jnp.isfinite(out["cls_logits"]))) and bool(jnp.all(jnp.isfinite(out["bbox_regression"])))


@pytest.mark.slow
def test_config_trains_two_steps(tmp_path: Path) -> None:
    """Two steps and the final evaluation of the config's smoke size. XLA's convolutions (`conv_impl="xla"`)
    compile faster than the CPU default's depthwise shift form, and this run checks wiring, not speed."""
    config = load_config_file(f"{CONFIG}:mobilenet_v3_fpn,smoke",
                              {"num_train_steps": 2, "log_every": 1, "checkpoint_every": 2, "conv_impl": "xla"})
    metrics = train.train_and_evaluate(config, tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    assert all(np.isfinite(metrics[k]) for k in ("AP", "AP50", "AR100")), metrics
