"""jaxadv attributions equal Captum's on identical weights and inputs.

The models are a tiny SmallGAP (widths 4-8-10, 12x12x1 inputs) and its PyTorch twin from
``jaxadv.interop.torch_port.to_torch``, and a two-hidden-layer ReLU MLP with a hand-built
``nn.Sequential`` twin (separate ``nn.ReLU`` modules, which Captum's GuidedBackprop hooks). Compared:
Saliency (abs=False), InputXGradient, IntegratedGradients for every Captum quadrature rule (zero and
random baselines), NoiseTunnel (smoothgrad, smoothgrad_sq, vargrad around Saliency; smoothgrad
around IG) with the same noise samples injected into Captum, LayerGradCam on the feature map (with
and without ReLU), Occlusion (constant fills) and GuidedBackprop. Error = max|ours - Captum| /
max|Captum| per map; bound 1e-5 in float64 (JAX x64, twin ``.double()``) and 1e-4 in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv.attributions as A
from jaxadv.models import get_model, init_variables
from tests.attributions.helpers import (
    TINY_WIDTHS,
    rel_err,
    tiny_mlp,
    tiny_smallgap,
    torch_mlp,
    uniform_images,
    x64,
)
from tests.conftest import torch_or_skip

pytestmark = [pytest.mark.peer, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

TOL = {"float64": 1e-5, "float32": 1e-4}
RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


@pytest.fixture(params=["float64", "float32"])
def setup(request):
    torch = torch_or_skip()
    captum = pytest.importorskip("captum.attr")
    from jaxadv.interop.torch_port import nchw_to_nhwc, nhwc_to_nchw, to_torch

    dtype = request.param
    with x64() if dtype == "float64" else _null():
        jdt = jnp.float64 if dtype == "float64" else jnp.float32
        _, v32, _ = tiny_smallgap("relu")
        _, _, f = tiny_smallgap("relu", dtype=jdt)
        tmodel = to_torch("smallgap", v32, widths=TINY_WIDTHS)
        _, m32, _ = tiny_mlp("relu")
        _, _, fm = tiny_mlp("relu", dtype=jdt)
        tmlp = torch_mlp(m32)
        if dtype == "float64":
            tmodel, tmlp = tmodel.double(), tmlp.double()
        x = uniform_images(2, (12, 12, 1), dtype=jdt)
        xm = uniform_images(2, (6, 6, 1), seed=3, dtype=jdt)
        t = np.array([3, 7])

        def to_t(a):
            out = nhwc_to_nchw(np.asarray(a, np.float32) if dtype == "float32" else a)
            if dtype == "float64":
                out = torch.from_numpy(np.ascontiguousarray(
                    np.transpose(np.asarray(a, np.float64), (0, 3, 1, 2))))
            return out

        yield dict(torch=torch, captum=captum, f=f, fm=fm, tmodel=tmodel, tmlp=tmlp, x=x, xm=xm,
                   t=t, tt=torch.tensor(t), to_t=to_t, to_nhwc=nchw_to_nhwc, tol=TOL[dtype],
                   dtype=dtype)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_saliency_and_input_x_gradient(setup):
    s = setup
    c = s["captum"]
    theirs = s["to_nhwc"](c.Saliency(s["tmodel"]).attribute(s["to_t"](s["x"]), target=s["tt"],
                                                             abs=False))
    assert rel_err(A.saliency(s["f"].logits, s["x"], s["t"]), theirs) < s["tol"]
    theirs = s["to_nhwc"](c.InputXGradient(s["tmodel"]).attribute(s["to_t"](s["x"]),
                                                                  target=s["tt"]))
    assert rel_err(A.gradient_x_input(s["f"].logits, s["x"], s["t"]), theirs) < s["tol"]


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_every_rule(setup, rule):
    s = setup
    ig = s["captum"].IntegratedGradients(s["tmodel"])
    base = 0.3 * uniform_images(2, (12, 12, 1), seed=8, dtype=s["x"].dtype)
    for baseline, tbase in [("zero", None), (base, s["to_t"](base))]:
        theirs = s["to_nhwc"](ig.attribute(s["to_t"](s["x"]), baselines=tbase, target=s["tt"],
                                           n_steps=8, method=rule))
        ours = A.integrated_gradients(s["f"].logits, s["x"], s["t"], baseline=baseline,
                                      num_steps=8, rule=rule, chunk_size=3)
        assert rel_err(ours, theirs) < s["tol"], rule


def _inject_noise(monkeypatch, noise_nhwc, torch, to_t):
    """Makes Captum's NoiseTunnel add our samples: its layout is (B * S) rows, example-major."""
    from captum.attr import NoiseTunnel

    s_, b = noise_nhwc.shape[:2]
    rows = to_t(jnp.transpose(noise_nhwc, (1, 0, 2, 3, 4)).reshape((b * s_,)
                                                                   + noise_nhwc.shape[2:]))

    def add(inp, stdev, n):
        assert n == s_
        return inp.repeat_interleave(n, dim=0) + rows

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add))


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_saliency_with_the_same_noise(setup, monkeypatch, kind):
    s = setup
    noise = 0.1 * uniform_images(3 * 2, (12, 12, 1), seed=4, dtype=s["x"].dtype).reshape(
        (3, 2, 12, 12, 1)) - 0.05
    _inject_noise(monkeypatch, noise, s["torch"], s["to_t"])
    nt = s["captum"].NoiseTunnel(s["captum"].Saliency(s["tmodel"]))
    theirs = s["to_nhwc"](nt.attribute(s["to_t"](s["x"]), nt_type=kind, nt_samples=3, stdevs=0.1,
                                       target=s["tt"], abs=False))
    ours = A.smooth_grad(s["f"].logits, s["x"], s["t"], None, noise=noise, kind=kind)
    assert rel_err(ours, theirs) < s["tol"]


def test_noise_tunnel_integrated_gradients(setup, monkeypatch):
    s = setup
    noise = 0.1 * uniform_images(3 * 2, (12, 12, 1), seed=5, dtype=s["x"].dtype).reshape(
        (3, 2, 12, 12, 1))
    _inject_noise(monkeypatch, noise, s["torch"], s["to_t"])
    nt = s["captum"].NoiseTunnel(s["captum"].IntegratedGradients(s["tmodel"]))
    theirs = s["to_nhwc"](nt.attribute(s["to_t"](s["x"]), nt_type="smoothgrad", nt_samples=3,
                                       stdevs=0.1, target=s["tt"], n_steps=6,
                                       method="riemann_right"))
    ours = A.smooth_grad(s["f"].logits, s["x"], s["t"], None, noise=noise,
                         method=A.integrated_gradients, num_steps=6, rule="riemann_right")
    assert rel_err(ours, theirs) < s["tol"]


@pytest.mark.parametrize("relu", [True, False])
def test_layer_grad_cam(setup, relu):
    from jaxadv.interop.torch_port import WithFeatureLayer

    s = setup
    w = WithFeatureLayer(s["tmodel"])
    gc = s["captum"].LayerGradCam(w, w.feat)
    theirs = gc.attribute(s["to_t"](s["x"]), target=s["tt"], relu_attributions=relu)
    theirs = theirs.detach().numpy()[:, 0]
    ours = A.grad_cam(s["f"].features, s["f"].head, s["x"], s["t"], relu=relu)
    assert ours.shape == theirs.shape
    assert rel_err(ours, theirs) < s["tol"]


@pytest.mark.parametrize("fill", [0.0, 0.3])
def test_occlusion(setup, fill):
    s = setup
    occ = s["captum"].Occlusion(s["tmodel"])
    theirs = s["to_nhwc"](occ.attribute(s["to_t"](s["x"]), sliding_window_shapes=(1, 3, 3),
                                        strides=(1, 2, 2), baselines=fill, target=s["tt"]))
    ours = A.occlusion(s["f"].logits, s["x"], s["t"], window=3, strides=2, fill=fill)
    assert rel_err(ours, theirs) < s["tol"]


def test_guided_backprop(setup):
    s = setup
    gb = s["captum"].GuidedBackprop(s["tmlp"])
    theirs = s["to_nhwc"](gb.attribute(s["to_t"](s["xm"]), target=s["tt"] % 5))
    ours = A.guided_backprop(s["fm"].logits, s["xm"], s["t"] % 5)
    assert np.abs(theirs).max() > 0
    assert rel_err(ours, theirs) < s["tol"]


def test_double_twin_of_a_normalised_model_equals_jaxadv_in_float64():
    """The twin keeps the input normalisation's constants as Python floats, so ``.double()``
    computes with the same float64 mean/std as jaxadv under x64 (float32 buffers carried their
    rounding into the double twin: a 3e-8 relative logit error on PreAct ResNet-18)."""
    torch = torch_or_skip()
    from jaxadv.interop.torch_port import nhwc_to_nchw, to_torch

    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    m = get_model("smallgap", widths=TINY_WIDTHS, mean=mean, std=std)
    v = init_variables(m, jax.random.key(0), (1, 12, 12, 3))
    tmodel = to_torch("smallgap", v, widths=TINY_WIDTHS, mean=mean, std=std).double()
    x32 = np.asarray(uniform_images(2, (12, 12, 3)))
    with x64():
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
        ours = np.asarray(m.apply(v64, jnp.asarray(x32, jnp.float64), train=False))
    with torch.no_grad():
        theirs = tmodel(nhwc_to_nchw(x32).double()).numpy()
    assert ours.dtype == np.float64 and theirs.dtype == np.float64
    assert rel_err(ours, theirs) < 1e-12
