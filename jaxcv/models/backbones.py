"""The backbone contract: what every registered backbone provides, and what consumers may rely on.

A backbone is a linen module registered in `BACKBONES` under its name (`resnet18`, `mobilenet_v3_large`,
`vit_small_patch16_224`, ...); the builder takes the module's keyword arguments. Every backbone

- takes `num_classes: int = 0`, `dtype` (compute) and `param_dtype`;
- has `__call__(x: [B, H, W, C] float, train: bool) -> dict[str, Array]` whose keys are level names:
  `stem` and `C1`..`C5`, where `Ck` is a map [B, ceil(H / 2**k), ceil(W / 2**k), channels] at stride 2**k
  (by conv arithmetic), and only the levels the network really has (a ViT with 16-pixel patches has only
  `C4`; a MobileNetV3 has `C1`..`C5`). With `num_classes > 0` it is a classifier and also returns float32
  `logits` [B, num_classes] and the vector the classifier reads, `pre_logits` [B, D];
- declares its levels without being run: `module.feature_info() -> {level: Level(channels, stride)}`
  (a `nn.nowrap` method: it reads only the module's attributes), in increasing stride.

Consumers take a backbone by name (`model.backbone = "resnet50"`) through `create_backbone` and read levels
by name. A detector needing levels a backbone lacks (an FPN wants `C3`..`C5`, a ViT has `C4`) builds them
with `jaxcv.models.pyramid.SimpleFeaturePyramid` (ViTDet: transposed convs up, max-pool down from the one
level there is), which a consumer asks for explicitly; otherwise `require_levels` fails naming the levels.

Weights: `IMPORTERS` maps "SOURCE:ARCH" (`torchvision:resnet50`, `timm:vit_tiny_patch16_224`,
`keras:mini_xception`, `darknet`, ...) to `fn(state_dict, **kwargs) -> (module, variables)`, strict about
every key and shape (`jaxcv.interop.strict_load`); `jaxcv.interop.from_torchvision` & co. look them up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn

from jaxcv.registry import Registry

# name -> callable(**kwargs) -> backbone module (the contract above).
BACKBONES = Registry("backbone")
# "source:arch" -> callable(state_dict: Mapping[str, np.ndarray], **kwargs) -> (module, variables).
IMPORTERS = Registry("weights importer")

LEVEL_ORDER = ("stem", "C1", "C2", "C3", "C4", "C5")


@dataclasses.dataclass(frozen=True)
class Level:
    """One feature map of a backbone: its channel count and its stride in input pixels."""

    channels: int
    stride: int


def level_name(stride: int) -> str:
    """The level name of a stride: 2**k -> "Ck" (a ViT with 16-px patches gives "C4")."""
    k = math.log2(stride)
    if stride < 2 or k != int(k) or k > 5:
        raise ValueError(f"stride {stride} is not a power of two in 2..32, so it has no level name")
    return f"C{int(k)}"


def register_backbone(name: str, builder: Callable[..., nn.Module], *, model: bool = True) -> None:
    """Registers `builder` as backbone `name`, and (`model=True`) as a model of the same name, so a
    classification config can name it directly (`model.name = "mobilenet_v3_small"`, num_classes > 0)."""
    from jaxcv.models import MODELS

    BACKBONES.register(name, builder)
    if model:
        MODELS.register(name, builder)


def create_backbone(arch: str, /, **kwargs: Any) -> nn.Module:
    """Backbone `arch` built with `kwargs` (module attributes, and linen's `name` / `parent`)."""
    return BACKBONES.get(arch)(**kwargs)


def feature_info(arch: str, /, **kwargs: Any) -> dict[str, Level]:
    """The levels of backbone `arch` built with `kwargs`, without running it."""
    return dict(create_backbone(arch, **kwargs).feature_info())


def require_levels(name: str, info: Mapping[str, Level], wanted: Iterable[str]) -> None:
    """Raises naming the backbone, the levels it lacks and the ones it has."""
    missing = [lvl for lvl in wanted if lvl not in info]
    if missing:
        raise ValueError(
            f"backbone {name!r} has levels {sorted(info, key=LEVEL_ORDER.index)} but this model needs "
            f"{missing}; use a backbone with them or a simple feature pyramid (model.simple_pyramid=True)"
        )


def deepest_level(info: Mapping[str, Level]) -> str:
    """The level with the largest stride (`stem` only when it is the only map)."""
    maps = [lvl for lvl in info if lvl != "stem"] or list(info)
    return max(maps, key=lambda lvl: info[lvl].stride)
