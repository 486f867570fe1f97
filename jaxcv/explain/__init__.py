"""Looking inside a trained model: stage activations, filter patterns by gradient ascent, Grad-CAM.

    python -m jaxcv.explain --workdir=DIR --image=FILE --what=activations|filters|gradcam \
        [--layer=NAME] [--channel=N] [--class_index=N] [--out=FILE.png]

The config comes from `DIR/config.json`, the weights from `DIR`'s latest checkpoint (restored through
the Trainer, like `--mode=eval`). Without `--image`, the first image of the validation split is used.

Layer names (`--layer`, the `layer` arguments): `path/to/module` is that submodule's `__call__`
output (e.g. `block2_conv1` of small_cnn, `layer4_1` of a ResNet, `backbone/layer3_0` of a U-Net);
`path:key` selects an entry of a dict/list output (`backbone:C4`); a bare key of the model's own
output dict also works (`C5`, `stem`, `features`, `logits`). `list_layers` lists them all. Images
are what the model consumes: float32 [H, W, 3] standardized with the ImageNet mean/std
(`jaxcv.data.base.normalize`), as the eval transform produces them.
"""

from jaxcv.data.base import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401
from jaxcv.explain.layers import (  # noqa: F401
    PREDICTION_KEYS,
    default_layer,
    format_layer,
    list_layers,
    parse_layer,
    resolve_layer,
    target_scores,
)
from jaxcv.explain.methods import (  # noqa: F401
    filter_pattern,
    filter_patterns,
    grad_cam,
    grad_cam_details,
    layer_activation,
    pattern_to_uint8,
    stage_activations,
)
from jaxcv.explain.run import explain, load_run, model_input, restore_state, run_config  # noqa: F401
