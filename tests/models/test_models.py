"""Model shapes, the CAM identity mean(CAM_c) == logit_c, the activation switch, the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.models import available_models, get_model, init_variables, model_fns

CASES = [
    ("smallgap", {}, (3, 28, 28, 1), (7, 7, 100)),
    ("smallgap", {}, (3, 32, 32, 3), (8, 8, 100)),
    ("poolgap", {}, (3, 28, 28, 1), (7, 7, 64)),
    ("boopathy_wresnet", {}, (2, 32, 32, 3), (8, 8, 64)),
    ("preact_resnet18", {"width_multiplier": 0.25}, (2, 32, 32, 3), (4, 4, 128)),
    ("wide_resnet", {"depth": 10, "width": 2}, (2, 32, 32, 3), (8, 8, 128)),
    ("wide_resnet", {"depth": 10, "width": 1, "use_batch_norm": False, "activation": "swish"},
     (2, 32, 32, 3), (8, 8, 64)),
    ("mlp", {"hidden": (32,)}, (3, 8, 8, 1), (1, 1, 32)),
    ("linear", {}, (3, 8, 8, 1), (1, 1, 64)),
]


@pytest.mark.parametrize("name,kwargs,shape,feat", CASES)
def test_shapes_and_cam_identity(name, kwargs, shape, feat, fast_compile):
    model = get_model(name, num_classes=10, **kwargs)
    variables = init_variables(model, jax.random.key(0), shape)
    fns = model_fns(model, variables)
    x = jax.random.uniform(jax.random.key(1), shape)
    a = fns.features(x)
    logits = fns.logits(x)
    cam = fns.cam(a)
    assert a.shape == (shape[0],) + feat
    assert logits.shape == (shape[0], 10)
    assert cam.shape == (shape[0],) + feat[:2] + (10,)
    # CAM is exact for a GAP head: the spatial mean of each class map is that class's logit.
    np.testing.assert_allclose(cam.mean(axis=(1, 2)), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns.head(a), logits, rtol=1e-6, atol=1e-6)


def test_boopathy_init_statistics():
    """conv W ~ N(0, 1/(k*k*C_in)), bias 0; head W ~ N(0, 1/C) (methods.md 1.1)."""
    model = get_model("smallgap")
    params = init_variables(model, jax.random.key(0), (1, 28, 28, 1))["params"]
    w3 = np.asarray(params["conv3"]["kernel"])
    assert abs(w3.std() - (1 / np.sqrt(7 * 7 * 32))) < 0.05 / np.sqrt(7 * 7 * 32)
    assert np.all(np.asarray(params["conv3"]["bias"]) == 0)
    head = np.asarray(params["head"]["kernel"])
    assert head.shape == (100, 10) and "bias" not in params["head"]
    assert abs(head.std() - 0.1) < 0.02


def test_no_activation_before_gap_and_preactivation():
    """Features are pre-activation: with ReLU the last map still has negative entries."""
    model = get_model("smallgap")
    v = init_variables(model, jax.random.key(0), (2, 28, 28, 1))
    a = model_fns(model, v).features(jax.random.uniform(jax.random.key(2), (2, 28, 28, 1)))
    assert float(a.min()) < 0


def test_activation_switch_changes_outputs_but_not_params():
    relu = get_model("smallgap", activation="relu")
    soft = get_model("smallgap", activation="softplus")
    v = init_variables(relu, jax.random.key(0), (2, 28, 28, 1))
    x = jax.random.uniform(jax.random.key(3), (2, 28, 28, 1))
    out_r = relu.apply(v, x)
    out_s = soft.apply(v, x)
    assert out_r.shape == out_s.shape
    assert not np.allclose(out_r, out_s)
    with pytest.raises(ValueError, match="Unknown activation"):
        get_model("smallgap", activation="tanhh").apply(v, x)


def test_normalisation_inside_model():
    m = get_model("smallgap", mean=(0.5,), std=(0.25,))
    plain = get_model("smallgap")
    v = init_variables(m, jax.random.key(0), (1, 28, 28, 1))
    x = jax.random.uniform(jax.random.key(4), (2, 28, 28, 1))
    np.testing.assert_allclose(m.apply(v, x), plain.apply(v, (x - 0.5) / 0.25), rtol=1e-5,
                               atol=1e-5)


def test_batch_norm_eval_mode_does_not_couple_examples(fast_compile):
    m = get_model("preact_resnet18", width_multiplier=0.125)
    v = init_variables(m, jax.random.key(0), (4, 32, 32, 3))
    x = jax.random.uniform(jax.random.key(5), (4, 32, 32, 3))
    apply = jax.jit(m.apply)  # two compiles (batch 4 and 1) instead of op-by-op dispatch
    full = apply(v, x)
    single = jnp.concatenate([apply(v, x[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(full, single, rtol=1e-4, atol=1e-5)


def test_registry():
    assert {"smallgap", "poolgap", "preact_resnet18", "wide_resnet"} <= set(available_models())
    with pytest.raises(ValueError, match="Unknown model"):
        get_model("resnet1000")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        init_variables(get_model("wide_resnet", depth=11), jax.random.key(0), (1, 32, 32, 3))


@pytest.mark.slow
def test_resnet_init_and_sown_intermediates_at_batches_the_fast_path_chunks(fast_compile,
                                                                          monkeypatch):
    """The first stage runs over chunks of images (a lax.map) only where nothing is written: at
    init (batch 9 and more chunks on CPU) and with a mutable 'intermediates' collection the
    parameters / intermediates created inside the map escaped as tracers."""
    from jaxadv.models import fastpath

    # The rule of one host device with Eigen's convolutions (this suite fakes 8 devices).
    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: False)
    m = get_model("preact_resnet18")
    x = jax.random.uniform(jax.random.key(1), (9, 32, 32, 3))
    assert fastpath.depth_first_images(9, (32, 32), 64) == 5  # two chunks of images
    v = init_variables(m, jax.random.key(0), x.shape)
    leaves = jax.tree.leaves(v)
    assert all(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
               for leaf in leaves)
    np.asarray(v["params"]["body"]["stem"]["kernel"])  # concrete
    with fastpath.enabled(False):
        ref = m.apply(v, x)
    np.testing.assert_allclose(m.apply(v, x), ref, rtol=1e-4, atol=1e-5)
    _, inter = m.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    assert all(not isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(inter))


def test_smallgap_fast_path_checks_the_parameter_shapes(monkeypatch):
    """The fast path reads the last conv's and the head's parameters directly: parameters of a
    SmallGAP with other widths must be refused as by nn.Conv, not folded into logits."""
    from flax.errors import ScopeParamShapeError

    from jaxadv.models import fastpath

    monkeypatch.setattr(fastpath, "_fold_pay", lambda batch: True)  # take the fold at any batch
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    other = init_variables(get_model("smallgap", widths=(16, 32, 50)), jax.random.key(0), x.shape)
    m = get_model("smallgap")
    v = init_variables(m, jax.random.key(0), x.shape)
    v = {**v, "params": {**v["params"], "conv3": other["params"]["conv3"],
                         "head": other["params"]["head"]}}
    with pytest.raises(ValueError, match=r"conv3: parameters of shape kernel \(.*50\).*another "
                                         r"model"):
        m.apply(v, x)
    with pytest.raises(ValueError, match="conv3: parameters of shape"):
        m.apply(v, x, method="logits_and_cam")  # the composed conv-then-dense form
    with fastpath.enabled(False), pytest.raises(ScopeParamShapeError):
        m.apply(v, x)
