"""Models, chosen by name from the config: `create_model(config.model.name, **config.model.kwargs)`."""

from typing import Any

import flax.linen as nn

from jaxcv.registry import Registry

# name -> callable(**kwargs) -> nn.Module
MODELS = Registry("model")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return MODELS.get(name)(**kwargs)


# Each model module registers itself on import.
from jaxcv.models import resnet  # noqa: E402,F401,I001
from jaxcv.models import cnn  # noqa: E402,F401
from jaxcv.models import retinanet  # noqa: E402,F401
from jaxcv.models import unet  # noqa: E402,F401
from jaxcv.models import simple_detectors  # noqa: E402,F401
from jaxcv.models import yolov8  # noqa: E402,F401
from jaxcv.models import pyramid, vgg, vit  # noqa: E402,F401
from jaxcv.models import darknet  # noqa: E402,F401
from jaxcv.models import sam  # noqa: E402,F401
from jaxcv.models import mini_xception, mobilenet_v3  # noqa: E402,F401
