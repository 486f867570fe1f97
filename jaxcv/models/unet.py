"""Segmentation networks (NHWC, linen): U-Net on any registered backbone as encoder, the classic U-Net, and
the small Keras Oxford-IIIT Pet segmenter.

Every model maps `x: [B, H, W, 3]` to `{"logits": [B, H, W, num_classes] float32}` at input resolution.
`train=True` normalizes with batch statistics and updates `batch_stats` (apply with
`mutable=["batch_stats"]`); `train=False` uses the running averages. `dtype` is the compute dtype
(e.g. bfloat16); parameters stay float32 and logits are always float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcv.models import MODELS
from jaxcv.models.backbones import create_backbone, deepest_level
from jaxcv.models.layers import BatchNorm, Conv, output_dtype

Array = jax.Array
Dtype = Any
Upsample = Literal["bilinear", "nearest", "transpose"]

# smp's `initialize_decoder`: kaiming_uniform_(fan_in, relu) for convs, zero bias; BN scale 1, bias 0.
decoder_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
# smp's `initialize_head`: xavier_uniform_ weights, zero bias.
head_conv_init = nn.initializers.xavier_uniform()
# Ronneberger et al. 2015, Sec. 3: Gaussian with std sqrt(2 / N), N = fan-in (He init).
he_normal_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _fit(x: Array, size: tuple[int, int]) -> Array:
    """Crops or zero-pads x: [B, h, w, C] at the bottom/right to [B, *size, C] (odd-size skips)."""
    x = x[:, : size[0], : size[1]]
    ph, pw = size[0] - x.shape[1], size[1] - x.shape[2]
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return x


def _resize(x: Array, size: tuple[int, int], method: str) -> Array:
    """x: [B, h, w, C] -> [B, *size, C]. "bilinear" uses half-pixel centres, i.e. torch
    `F.interpolate(mode="bilinear", align_corners=False)` when upsampling."""
    if x.shape[1:3] == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method=method).astype(x.dtype)


class ConvBNReLU(nn.Module):
    """3x3 conv ('same' padding) -> BatchNorm (torch defaults: eps 1e-5, momentum 0.1) -> ReLU.

    As smp's `Conv2dReLU`, the conv has no bias when followed by BN."""

    features: int
    use_bn: bool = True
    kernel_init: nn.initializers.Initializer = decoder_conv_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = Conv(
            self.features,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=not self.use_bn,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.use_bn:
            return BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                use_fast_variance=False,
                dtype=self.dtype,
                name="bn",
            )(x, relu=True)
        return nn.relu(x)


class DecoderBlock(nn.Module):
    """U-Net decoder block: upsample to the skip's size (x2), concat skips, (conv3x3-BN-ReLU) x 2.

    Same structure as smp's `unet.decoder.DecoderBlock`. `upsample="transpose"` uses a learned 2x2/2
    transposed conv to `features` channels instead of interpolation.
    """

    features: int
    upsample: Upsample = "bilinear"
    use_bn: bool = True
    kernel_init: nn.initializers.Initializer = decoder_conv_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, skips: Sequence[Array], size: tuple[int, int], train: bool) -> Array:
        """x: [B, h, w, Cin]; skips: arrays [B, *size, Cs]; returns [B, *size, features]."""
        if self.upsample == "transpose":
            x = nn.ConvTranspose(
                self.features,
                (2, 2),
                strides=(2, 2),
                padding="VALID",
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                name="up",
            )(x)
            x = _fit(x, size)
        elif self.upsample in ("bilinear", "nearest"):
            x = _resize(x, size, self.upsample)
        else:
            raise ValueError(f"unknown upsample {self.upsample!r}; expected bilinear, nearest or transpose")
        if skips:
            x = jnp.concatenate([x, *[s.astype(x.dtype) for s in skips]], axis=-1)
        for i in range(2):
            x = ConvBNReLU(self.features, self.use_bn, self.kernel_init, self.dtype, name=f"conv{i + 1}")(x, train)
        return x


class EncoderUNet(nn.Module):
    """U-Net on any registered backbone as its encoder (smp `Unet` / fastai `DynamicUnet` style).

    The encoder is the submodule `backbone` (`jaxcv.models.backbones`, built without a classifier), so
    ImageNet weights load under the `backbone/` prefix and optimizers can give it its own learning rate.
    The decoder has one block per halving of the encoder's deepest stride (`decoder_channels`, 5 for
    stride 32): each upsamples to the next finer stride and concatenates the encoder levels at that stride
    (C-levels, then `stem`). For a ResNet:

      block0: up(C5) ++ C4      block1: ++ C3      block2: ++ C2 ++ stem (both stride 4)
      block3: no skip (stride 2) block4: no skip (stride 1), then a 3x3 conv head to logits.

    smp concatenates the stride-2 stem conv output (before the max pool) in block3; our ResNet exposes
    only the post-pool `stem`, so it joins C2 at stride 4 instead (a backbone with a `C1`, like
    MobileNetV3, joins it at stride 2). Blocks upsample to the skip's exact size, so any H, W works
    (ceil(n/2) per stride-2 step). `freeze_encoder_bn` keeps the encoder's BatchNorm in inference mode
    (running statistics, no updates) even when `train=True`, the usual choice for small batches of
    fine-tuning.
    """

    num_classes: int
    encoder: str = "resnet34"
    encoder_kwargs: Mapping[str, Any] | None = None
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    upsample: Upsample = "bilinear"
    freeze_encoder_bn: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        body = create_backbone(self.encoder, num_classes=0, dtype=self.dtype, name="backbone",
                               **dict(self.encoder_kwargs or {}))
        info = body.feature_info()
        deepest = deepest_level(info)
        blocks = int(math.log2(info[deepest].stride))
        if len(self.decoder_channels) != blocks:
            raise ValueError(f"decoder_channels needs {blocks} entries for encoder {self.encoder!r} (stride "
                             f"{info[deepest].stride} -> 1), got {tuple(self.decoder_channels)}")
        h, w = x.shape[1:3]
        feats = body(x, train=train and not self.freeze_encoder_bn)
        y = feats[deepest]
        for i, ch in enumerate(self.decoder_channels):
            stride = info[deepest].stride // 2 ** (i + 1)
            names = sorted((lvl for lvl in info if info[lvl].stride == stride and lvl != deepest),
                           key=lambda lvl: (lvl == "stem", lvl))
            skips = [feats[lvl] for lvl in names]
            size = skips[0].shape[1:3] if skips else (-(-h // stride), -(-w // stride))
            y = DecoderBlock(ch, self.upsample, dtype=self.dtype, name=f"decoder{i}")(y, skips, size, train)
        logits = Conv(
            self.num_classes,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=head_conv_init,
            dtype=output_dtype(self.dtype),
            name="head",
        )(y.astype(output_dtype(self.dtype)))
        return {"logits": logits}


ResNetUNet = EncoderUNet  # the name of its first encoder family


class UNet(nn.Module):
    """Classic U-Net (Ronneberger et al. 2015, arXiv:1505.04597), trained from scratch.

    `depth` 2x2 max-pool steps; each level has (conv3x3 [-BN] -ReLU) x 2 at `base_width * 2**level`
    channels (64..1024 for the paper's depth 4). The decoder uses 2x2 up-convolutions halving the
    channels (or bilinear/nearest resizing), concatenates the encoder feature map and applies two
    more 3x3 convs; a 1x1 conv gives the logits. Unlike the paper's unpadded convs (output smaller
    than input, skips cropped), convs use 'same' padding so the output equals the input size; for
    sizes that are not multiples of 2**depth, up-sampled maps are zero-padded at the bottom/right to
    the skip's size (as milesial/Pytorch-UNet). `use_bn=False` gives the paper's BN-free network.
    """

    num_classes: int
    base_width: int = 64
    depth: int = 4
    use_bn: bool = True
    upsample: Upsample = "transpose"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        def double_conv(y: Array, features: int, name: str) -> Array:
            for i in range(2):
                y = ConvBNReLU(features, self.use_bn, he_normal_init, self.dtype, name=f"{name}_conv{i + 1}")(y, train)
            return y

        y = jnp.asarray(x, self.dtype)
        skips: list[Array] = []
        for level in range(self.depth):
            y = double_conv(y, self.base_width * 2**level, f"down{level}")
            skips.append(y)
            y = nn.max_pool(y, (2, 2), strides=(2, 2))
        y = double_conv(y, self.base_width * 2**self.depth, "bottleneck")
        for level in reversed(range(self.depth)):
            skip = skips[level]
            y = DecoderBlock(
                self.base_width * 2**level,
                self.upsample,
                self.use_bn,
                he_normal_init,
                self.dtype,
                name=f"up{level}",
            )(y, [skip], skip.shape[1:3], train)
        wide = output_dtype(self.dtype)
        logits = Conv(self.num_classes, (1, 1), kernel_init=he_normal_init, dtype=wide, name="head")(y.astype(wide))
        return {"logits": logits}


class PetsSegmenter(nn.Module):
    """The Xception-style "U-Net-like" model of the Keras tutorial "Image segmentation with a U-Net-like
    architecture" (F. Chollet, keras.io/examples/vision/oxford_pets_image_segmentation, 160x160 Pets).

    Entry: conv3x3/2 (32) -> BN -> ReLU. Down blocks (64, 128, 256): [ReLU -> SeparableConv3x3 -> BN]
    x 2 -> MaxPool3x3/2 'same', plus a 1x1/2 conv projection of the block input (residual). Up blocks
    (256, 128, 64, 32): [ReLU -> ConvTranspose3x3 -> BN] x 2 -> nearest x2 upsampling, plus the
    nearest-upsampled block input through a 1x1 conv (residual). Head: conv3x3 to `num_classes`
    (logits here; the tutorial applies softmax in the layer). Layers keep Keras defaults: glorot-uniform
    kernels, zero biases, BatchNorm momentum 0.99 / epsilon 1e-3, TF 'SAME' padding. Note the tutorial's
    down blocks do use the 3x3/2 max pool (the entry conv is the only strided conv).
    H and W must be multiples of 16.
    """

    num_classes: int
    down_filters: Sequence[int] = (64, 128, 256)
    up_filters: Sequence[int] = (256, 128, 64, 32)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        h, w = x.shape[1:3]
        if h % 16 or w % 16:
            raise ValueError(f"PetsSegmenter needs H and W divisible by 16, got {h}x{w}")
        init = nn.initializers.glorot_uniform()
        conv = functools.partial(Conv, padding="SAME", kernel_init=init, dtype=self.dtype)
        bn = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=self.dtype
        )

        def separable(y: Array, features: int, name: str) -> Array:
            # Keras SeparableConv2D: bias-free depthwise 3x3 (multiplier 1), then 1x1 pointwise with bias.
            c = y.shape[-1]
            y = conv(c, (3, 3), feature_group_count=c, use_bias=False, name=f"{name}_depthwise")(y)
            return conv(features, (1, 1), name=f"{name}_pointwise")(y)

        def up2(y: Array) -> Array:  # Keras UpSampling2D(2), nearest
            return jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)

        y = jnp.asarray(x, self.dtype)
        y = nn.relu(bn(name="entry_bn")(conv(32, (3, 3), strides=(2, 2), name="entry_conv")(y)))
        previous = y
        for i, f in enumerate(self.down_filters):
            for j in range(2):
                y = separable(nn.relu(y), f, f"down{i}_sep{j + 1}")
                y = bn(name=f"down{i}_bn{j + 1}")(y)
            y = nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")
            y = y + conv(f, (1, 1), strides=(2, 2), name=f"down{i}_residual")(previous)
            previous = y
        for i, f in enumerate(self.up_filters):
            for j in range(2):
                y = nn.ConvTranspose(
                    f, (3, 3), padding="SAME", kernel_init=init, dtype=self.dtype, name=f"up{i}_convt{j + 1}"
                )(nn.relu(y))
                y = bn(name=f"up{i}_bn{j + 1}")(y)
            y = up2(y)
            y = y + conv(f, (1, 1), name=f"up{i}_residual")(up2(previous))
            previous = y
        logits = Conv(self.num_classes, (3, 3), padding="SAME", kernel_init=init, dtype=jnp.float32, name="head")(
            y.astype(jnp.float32)
        )
        return {"logits": logits}


MODELS.register("encoder_unet", EncoderUNet)
MODELS.register("unet_resnet", EncoderUNet)
for _encoder in ("resnet18", "resnet34", "resnet50"):
    MODELS.register(f"unet_{_encoder}", functools.partial(ResNetUNet, encoder=_encoder))
MODELS.register("unet", UNet)
MODELS.register("pets_segmenter", PetsSegmenter)
