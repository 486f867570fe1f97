"""SAM computing in bfloat16 (float32 weights, `module.clone(dtype=jnp.bfloat16)`, the CLI's `--dtype
bfloat16`): the predictor's logits and IoU predictions equal float32's within bfloat16 round-off, and the masks
agree wherever the float32 logit is not within that round-off of the threshold. A small random SAM (2 blocks,
64 px) keeps it cheap; the fixture model's bfloat16 errors are in benchmarks/README.md (SAM)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcv.models.sam import Sam
from jaxcv.sam import Predictor, postprocess_matrices, upscale_logits


def test_bfloat16_predictor_agrees_with_float32():
    module = Sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                 image_size=64, patch_size=8, window_size=4)
    s, m = module.image_size, 4 * module.embedding_size
    variables = jax.jit(lambda k: module.init(k, jnp.zeros((1, s, s, 3)), jnp.zeros((1, 1, 2)),
                                              jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 4)),
                                              jnp.zeros((1, m, m, 1))))(jax.random.key(0))
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prompts = {"point_coords": np.array([[20.0, 30.0]]), "point_labels": np.array([1]),
               "box": np.array([8.0, 10.0, 40.0, 44.0])}
    out = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        predictor = Predictor(module.clone(dtype=dtype), variables)
        predictor.set_image(image)
        assert predictor.features.dtype == dtype
        masks, iou, low = predictor.predict(**prompts, multimask_output=True)
        out[dtype] = (np.asarray(masks), np.asarray(iou, np.float32), np.asarray(low, np.float32))
    (m32, iou32, low32), (m16, iou16, low16) = out[jnp.float32], out[jnp.bfloat16]
    assert m16.shape == m32.shape == (3, 48, 64) and m16.dtype == bool and low16.shape == low32.shape
    scale = np.abs(low32).max()
    err = np.abs(low16 - low32).max() / scale
    assert 0 < err < 5e-2, err  # bfloat16 keeps 8 bits of mantissa: ~4e-3 per rounding, through 2 blocks
    np.testing.assert_allclose(iou16, iou32, rtol=0, atol=5e-2 * max(1.0, np.abs(iou32).max()))
    # the full-size masks come from upsampled logits: compare where float32 is clear of the threshold
    big32 = np.asarray(upscale_logits(low32, *postprocess_matrices(low32.shape[-1], s, (48, 64), (48, 64))))
    np.testing.assert_array_equal(m32, big32 > 0)
    clear = np.abs(big32) > 5e-2 * scale
    assert clear.mean() > 0.5 and (m16 == m32)[clear].all()
