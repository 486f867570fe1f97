"""The keras-io "image classification from scratch" example: a mini-Xception on tfds `cats_vs_dogs`, from scratch.

Keras' recipe: 180x180 images, augmentation random horizontal flip and RandomRotation(0.1), Adam 3e-4, batch 128,
25 epochs (the example reaches ~90 % validation accuracy). One output unit with a sigmoid in Keras; here two classes
with softmax cross-entropy (the same model otherwise; `num_classes` comes from the data). tfds has only a train split:
80 % train, 20 % held out.

    .venv/bin/tfds build cats_vs_dogs --file_format=array_record
    python -m jaxcv.main --config=configs/cats_vs_dogs_xception.py --workdir=runs/cats_vs_dogs

`:synthetic` trains the same network on the built-in synthetic images at 32 px (no download, minutes on a CPU); `:smoke`
is a seconds-long run. Inputs are standardized by the pipeline, so the model's Rescaling(1/255) is off.
"""

from jaxcv.config import classification_config, parse_config_arg, smoke


def get_config(arg: str | None = None):
    args = parse_config_arg(arg, ("smoke", "synthetic"))
    c = classification_config()
    c.model.name = "mini_xception"
    c.model.rescale = False  # jaxcv's pipeline already scales and standardizes the pixels
    c.data.name = "tfds_classification"
    c.data.tfds_name = "cats_vs_dogs"
    c.data.tfds_data_dir = ""
    c.data.train_split = "train[:80%]"
    c.data.eval_split = "train[80%:]"
    c.data.image_size = 180
    c.data.augment.random_resized_crop = False  # Keras resizes to 180x180, then flips and rotates
    c.data.augment.hflip = True
    c.data.augment.rotation = 0.1
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_train_steps = 3650  # 25 epochs of 18,600 images at batch 128
    c.eval_every = 730
    c.checkpoint_every = 730
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.weight_decay = 0.0
    c.schedule.name = "constant"
    if "synthetic" in args:
        c.data.name = "synthetic_classification"
        for key in ("tfds_name", "tfds_data_dir", "train_split", "eval_split"):
            del c.data[key]
        c.data.update({"num_classes": 2, "image_size": 32, "num_train": 1024, "num_val": 256, "seed": 0})
        c.batch_size, c.eval_batch_size, c.num_train_steps, c.eval_every = 32, 64, 300, 0
        c.optimizer.learning_rate = 1e-3
        c.model.bn_momentum = 0.9  # from scratch in 300 steps: running statistics must follow the weights
    if "smoke" in args:
        smoke(c)
        c.data.image_size = 64
    c.lock()
    return c
