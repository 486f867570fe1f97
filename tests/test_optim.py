"""Weight decay by parameter role: kernels and embeddings decay; norms, biases, position embeddings and
tokens do not, whatever their rank."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcv.config import classification_config
from jaxcv.optim import create_optimizer, decay_mask


class TinyViT(nn.Module):
    """A patch embedding, a class token, a learned 2-D position embedding, a LayerNorm and a head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (4, 4), strides=(4, 4), name="patch_embed")(x)  # [B, 2, 2, 8]
        x = x.reshape(x.shape[0], -1, 8)
        cls = self.param("cls_token", nn.initializers.normal(1.0), (1, 1, 8))
        pos = self.param("pos_embed", nn.initializers.normal(1.0), (1, 5, 8))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, 8)), x], axis=1) + pos
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(3, name="head")(x[:, 0])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_position_embedding_and_tokens_are_not_decayed(optimizer):
    params = TinyViT().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    mask = decay_mask(params)
    assert mask["pos_embed"] is False and mask["cls_token"] is False  # 2-D and 3-D, yet excluded
    assert mask["norm"] == {"scale": False, "bias": False}
    assert mask["head"] == {"kernel": True, "bias": False} and mask["patch_embed"]["kernel"] is True

    config = classification_config()
    config.optimizer.name = optimizer
    config.optimizer.weight_decay = 0.5
    config.optimizer.learning_rate = 0.1
    config.schedule.name = "constant"
    tx = create_optimizer(config, params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    moved = jax.tree.map(lambda u: bool(np.any(np.asarray(u) != 0)), updates)
    assert moved == mask  # with zero gradients only decay moves a parameter
