"""Box-prompted fine-tuning of SAM's mask decoder on the synthetic shapes (jaxcv/tasks/promptable_segmentation.py):
image encoder and prompt encoder frozen, focal 20 : dice 1 on the masks plus the IoU head's MSE; metric: mIoU of
the box-prompted masks on held-out images. Start from converted SAM weights (a random ViT-B learns nothing useful):

    python -m jaxcv.convert --arch segment_anything --weights sam_vit_b.safetensors --out runs/sam_vit_b
    python -m jaxcv.main --config=configs/shapes_sam_finetune.py --workdir=runs/shapes_sam \
        --config.init_from=runs/sam_vit_b
    python -m jaxcv.main --config=configs/shapes_sam_finetune.py:smoke --workdir=/tmp/sam_smoke

The conversion fixes the architecture and SAM's positional-encoding matrix (`model.converted` defaults to
`init_from`); zero-shot numbers: the same with `--mode=eval`. With the image encoder frozen, its embeddings are
computed once into WORKDIR/embeddings (`embedding_cache=False`: every step runs the encoder). `:smoke` is a tiny
random SAM on 64 px shapes (4 steps; with `--config.num_train_steps=350` it learns, see the README).
"""

import ml_collections

import jaxcv.tasks.promptable_segmentation  # noqa: F401  (registers the task until TASK_MODULES lists it)
from jaxcv.config import base_config, parse_config_arg, shapes_data, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg)
    c = base_config()
    c.task = "promptable_segmentation"
    c.model = ml_collections.ConfigDict({"name": "sam_vit_b", "converted": ""})
    # SAM's input size; objects 96-512 px across.
    shapes_data(c, image_size=1024, num_train=2048, num_val=128, max_objects=4, min_size=96.0, max_size=512.0)
    c.data.max_boxes = 4  # prompts per image
    c.data.augment = ml_collections.ConfigDict({"hflip": True})
    # Training prompts: a point inside the mask with probability point_prob (SAM: a point or a box, equally
    # likely), else the box, jittered; evaluation always prompts with the ground-truth box.
    c.prompts = ml_collections.ConfigDict({"box_jitter": 0.1, "box_jitter_max": 20.0, "point_prob": 0.5})
    c.loss = ml_collections.ConfigDict({"focal_weight": 20.0, "dice_weight": 1.0, "iou_weight": 1.0,
                                        "focal_alpha": 0.25, "focal_gamma": 2.0, "multimask": False})
    c.freeze = ("image_encoder", "prompt_encoder")
    c.embedding_cache = True  # frozen encoder: embeddings computed once, WORKDIR/embeddings/{split}.npy
    c.optimizer.update({"name": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-4, "clip_grad_norm": 1.0})
    c.schedule.update({"name": "warmup_cosine", "warmup_steps": 50})
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 500
    c.log_every = 25
    c.checkpoint_every = 250
    c.evals = ml_collections.ConfigDict({"promptable_segmentation": {"type": "promptable_segmentation"}})
    c.checkpoint.best_metric = "mIoU"
    if "smoke" in args:
        # A random 2-block encoder with patch 8 (8 x 8 embeddings, 32 x 32 low-res masks) on 64 px shapes of
        # 20-40 px; from a random decoder, SAM's loss first drives every logit negative and the masks find the
        # boxes after ~150-200 steps, hence a constant learning rate (tests/test_sam_finetune.py).
        smoke(c, **{"model.name": "sam", "model.encoder_embed_dim": 32, "model.encoder_depth": 2,
                    "model.encoder_num_heads": 2, "model.encoder_global_attn_indexes": (1,), "model.image_size": 64,
                    "model.patch_size": 8, "model.window_size": 4, "data.image_size": 64, "data.min_size": 20.0,
                    "data.max_size": 40.0, "prompts.box_jitter_max": 2.0, "batch_size": 4, "eval_batch_size": 8,
                    "optimizer.learning_rate": 5e-4, "schedule.name": "constant", "schedule.warmup_steps": 10,
                    "prompts.point_prob": 0.0})  # box prompts only, as evaluated (benchmarks/README.md, SAM)
    c.lock()
    return c
