"""ViT from scratch on CIFAR-10: 4-pixel patches, AdamW, warmup + cosine, label smoothing, pad-crop + flip.

The model is timm's `VisionTransformer` (`jaxcv.models.vit`) at ViT-Tiny width (192, 3 heads, MLP ratio 4) with
9 blocks on 32 px images cut into 4x4 patches (an 8x8 grid + the class token), stochastic depth 0.1. The recipe is
the one the from-scratch small-dataset ViT papers train their ViT baselines with (Lee, Lee & Song 2021, "Vision
Transformer for Small-Size Datasets": depth 9, width 192, patch 4, AdamW at 1e-3 with batch 128, weight decay
0.05, linear warmup then cosine, label smoothing 0.1), without their AutoAugment / Mixup / CutMix / random erasing:
jaxcv has pad-crop and flips only, the setting of kentaroy47/vision-transformers-cifar10, whose patch-4 ViT reaches
about 80 % in 200 epochs. Gradients are clipped at norm 1 (big_vision's ViT default); position embeddings and the
class token get no weight decay (`jaxcv.optim.decay_mask`, timm's `no_weight_decay`).

Data: `tfds build cifar10 --file_format=array_record` (or let tfds download on first use).

    python -m jaxcv.main --config=configs/cifar10_vit.py --workdir=runs/cifar10_vit

Arguments: `:smoke` (a seconds-long run of this config, for tests); `:synthetic` (no download: the built-in
`synthetic_classification` images at 32 px, 10 classes, 4096 train / 512 held out, with a 4-block ViT of width 96
and the same recipe over 600 steps of batch 32, about a minute on a laptop CPU); `:smoke,synthetic` both.
"""

import ml_collections

from jaxcv.config import classification_config, parse_config_arg, smoke

EPOCH = 390  # steps of batch 128 over CIFAR-10's 50000 training images


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, ("smoke", "synthetic"))
    c = classification_config()
    # Any registered ViT name takes these overrides; vit_tiny's width and heads are kept.
    c.model = ml_collections.ConfigDict(
        {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "depth": 9, "pool": "token",
         "drop_path_rate": 0.1}
    )
    if "synthetic" in args:
        c.model.update({"embed_dim": 96, "depth": 4, "num_heads": 3, "drop_path_rate": 0.0})
        c.data.name = "synthetic_classification"
        c.data.num_train = 4096
        c.data.num_val = 512
    else:
        c.data.name = "cifar10"
        c.data.tfds_name = "cifar10"
        c.data.tfds_data_dir = ""
        c.data.train_split = "train"
        c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.num_classes = 10
    c.data.augment.random_resized_crop = False
    c.data.augment.pad_crop = 4  # CIFAR-style: zero-pad 4, random 32x32 crop, flip
    c.loss.label_smoothing = 0.1
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_train_steps = 200 * EPOCH
    c.eval_every = 10 * EPOCH
    c.checkpoint_every = 5 * EPOCH
    c.optimizer.update({"name": "adamw", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "weight_decay": 0.05,
                        "clip_grad_norm": 1.0})
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_steps = 10 * EPOCH
    if "synthetic" in args:
        c.batch_size = 32
        c.eval_batch_size = 128
        c.num_train_steps = 600
        c.eval_every = 0
        c.log_every = 50
        c.checkpoint_every = 300
        c.schedule.warmup_steps = 50
    if "smoke" in args:
        smoke(c)
    c.lock()
    return c
