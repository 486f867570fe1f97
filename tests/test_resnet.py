"""ResNet: torchvision parameter counts, ResNet-18 parity with torchvision fixtures, BN modes, bf16; SmallCNN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path, jit_opt

from jaxcv.interop import from_torchvision, load_safetensors
from jaxcv.models import MODELS, create_model


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract(model: nn.Module, size: int = 64):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


@pytest.mark.parametrize(
    "arch,expected",
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160)],
)
def test_param_counts_match_torchvision(arch: str, expected: int) -> None:
    variables = _abstract(create_model(arch, num_classes=1000))
    assert _count(variables["params"]) == expected


def test_registry_names() -> None:
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "small_cnn", "retinanet"):
        assert name in MODELS
    with pytest.raises(KeyError, match="resnet18"):
        create_model("resnet9000")


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_resnet18_parity_with_torchvision() -> None:
    state_dict = load_safetensors(fixture_path("resnet18.safetensors"))
    io = np.load(fixture_path("resnet18_io.npz"))
    model, variables = from_torchvision("resnet18", state_dict)
    assert model.num_classes == 1000
    out = jax.jit(lambda v, x: model.apply(v, x))(variables, io["input_nchw"].transpose(0, 2, 3, 1))
    errors = {}
    for ours, ref in [("stem", "stem"), ("C2", "layer1"), ("C3", "layer2"), ("C4", "layer3"),
                      ("C5", "layer4"), ("logits", "logits")]:
        got = np.asarray(out[ours])
        if got.ndim == 4:
            got = got.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        assert got.shape == io[ref].shape, (ours, got.shape, io[ref].shape)
        errors[ours] = _rel_err(got, io[ref])
    print("resnet18 relative max errors:", {k: f"{v:.2e}" for k, v in errors.items()})
    assert all(e < 1e-4 for e in errors.values()), errors


def test_odd_sizes_follow_conv_arithmetic() -> None:
    model = create_model("resnet18")
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                         jax.ShapeDtypeStruct((1, 33, 47, 3), jnp.float32))
    sizes = {k: v.shape[1:3] for k, v in out.items()}
    # torch: each stride-2 conv/pool (pad k//2) maps n -> ceil(n / 2); 33x47 -> 17x24 -> 9x12 -> ...
    assert sizes == {"stem": (9, 12), "C2": (9, 12), "C3": (5, 6), "C4": (3, 3), "C5": (2, 2)}
    assert "logits" not in out


def test_train_mode_updates_batch_stats_like_torch() -> None:
    model = create_model("resnet18", num_classes=5)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = jit_opt(model.init)(jax.random.key(0, impl="rbg"), x)
    train_fwd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    eval_fwd = jax.jit(lambda v, x: model.apply(v, x))
    out, updates = train_fwd(variables, x)
    new_stats = updates["batch_stats"]
    # Running mean follows torch momentum 0.1: new = 0.9 * old (0) + 0.1 * batch mean of conv1's output.
    conv1 = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)
    y = conv1.apply({"params": variables["params"]["conv1"]}, x)
    np.testing.assert_allclose(new_stats["bn1"]["mean"], 0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], new_stats)
    assert all(jax.tree.leaves(changed))
    # Eval mode uses running averages: an example's output does not depend on the rest of the batch.
    eval_pair = eval_fwd(variables, x)["logits"]
    eval_one = eval_fwd(variables, x[:1])["logits"]
    np.testing.assert_allclose(eval_pair[:1], eval_one, rtol=1e-5, atol=1e-5)
    train_one, _ = train_fwd(variables, jnp.concatenate([x[:1], -x[:1]]))
    assert not np.allclose(out["logits"][:1], train_one["logits"][:1], atol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_logits() -> None:
    model = create_model("resnet18", num_classes=7, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = jit_opt(model.init)(jax.random.key(0, impl="rbg"), x)
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(model.apply)(variables, x)
    assert out["C5"].dtype == jnp.bfloat16
    assert out["logits"].dtype == jnp.float32 and out["logits"].shape == (2, 7)
    assert bool(jnp.all(jnp.isfinite(out["logits"])))
    ref = jax.jit(create_model("resnet18", num_classes=7).apply)(variables, x)["logits"]
    assert _rel_err(np.asarray(out["logits"]), np.asarray(ref)) < 0.1


def test_init_follows_torchvision() -> None:
    model = create_model("resnet18", num_classes=10)
    variables = jit_opt(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    k = params["layer4_0"]["conv2"]["kernel"]  # 3x3x512x512, kaiming normal fan_out: std sqrt(2 / (9 * 512))
    assert abs(float(k.std()) / np.sqrt(2 / (9 * 512)) - 1) < 0.02
    assert float(params["bn1"]["scale"].min()) == 1.0 and float(jnp.abs(params["bn1"]["bias"]).max()) == 0.0
    assert float(params["layer1_0"]["bn2"]["scale"].min()) == 1.0  # zero_init_residual off by default
    fc_bound = 1 / np.sqrt(512)
    assert float(jnp.abs(params["fc"]["kernel"]).max()) <= fc_bound
    assert float(jnp.abs(params["fc"]["bias"]).max()) <= fc_bound
    zero = jit_opt(create_model("resnet18", zero_init_residual=True).init)(
        jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 3))
    )
    assert float(jnp.abs(zero["params"]["layer1_0"]["bn2"]["scale"]).max()) == 0.0


def test_small_cnn_outputs_dropout_and_training() -> None:
    import optax

    model = create_model("small_cnn", num_classes=4, widths=(8, 16), hidden=32)
    labels = jnp.arange(8) % 4
    # Learnable toy data: each class has its own colour offset on top of noise.
    colours = jax.random.normal(jax.random.key(5), (4, 1, 1, 3))
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) + 2.0 * colours[labels]
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    out = fwd(variables, x)
    assert out["logits"].shape == (8, 4) and out["logits"].dtype == jnp.float32
    assert out["features"].shape == (8, 32)
    np.testing.assert_array_equal(out["logits"], fwd(variables, x)["logits"])  # eval deterministic
    train_fwd = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    a = train_fwd(variables, x, jax.random.key(2))["logits"]
    b = train_fwd(variables, x, jax.random.key(3))["logits"]
    assert not np.allclose(a, b)

    tx = optax.adam(1e-2)
    params = variables["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(20):
        params, opt_state, loss = step(params, opt_state, jax.random.key(10 + i))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses

    flat = create_model("small_cnn", num_classes=3, widths=(8,), pool="flatten", batch_norm=True)
    v = jax.eval_shape(flat.init, jax.random.key(0), x[:, :16, :16])
    assert v["params"]["hidden"]["kernel"].shape == (8 * 8 * 8, 256) and "batch_stats" in v
