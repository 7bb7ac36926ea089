"""Step-speed benchmark: jaxadv against PyTorch on identical weights, and against the hardware limit.

    python -m experiments.benchmarks.step_speed --out results/step_speed.json
        [--quick] [--host_devices N] [--models smallgap,poolgap,preact_resnet18] [--repeats R]
        [--compare_standard] [--compare_no_rows] [--compare_no_patches] [--compare_no_taps]
        [--compare_no_fold] [--compare_no_phases] [--compare_no_stored] [--compare_no_winograd]
        [--compare_no_large_winograd] [--compare_no_depth_first] [--compare_no_window_adds]
        [--compare_cumsum_mask] [--compare_conv_backend]
        [--no_fastpath]
        [--torch_device cuda] [--precision highest]

Models (batch 128, float32, random N(0, 1/fan_in) weights, key 0): SmallGAP and PoolGAP on 28x28x1,
PreAct ResNet-18 (batch norm) on 32x32x3. Each is built in jaxadv and as its PyTorch twin with the
same weights (``jaxadv.interop.torch_port.to_torch``); logits and the input gradient of the loss are
checked to agree before anything is timed. Ops, the same work in both frameworks:

* ``forward``: eval-mode logits.
* ``pgd_step``: one l-inf PGD step, eps 8/255, step 2/255 (input gradient of the summed
  cross-entropy, signed step, projection onto the ball and [0, 1]).
* ``pgd10``: ``jaxadv.attacks.gradient.pgd`` with 10 steps and a random start; the PyTorch loop does
  the same work (random start, 10 forward+backward passes with best-so-far tracking, a final
  forward pass for the last iterate).
* ``train_step``: one SGD (lr 0.1, momentum 0.9) step on the mean cross-entropy in training mode
  (batch statistics for batch norm); jaxadv's ``make_train_step`` with donated state.

Timing: after a warm-up call of each (compilation for jaxadv), ``--repeats`` rounds in which the
contestants run in turn (the order alternating between rounds), so a change of load on this shared
machine hits them alike; medians with the interquartile range. ``speedup_vs_torch`` is torch median
/ jaxadv median. ``--calls_per_turn K`` makes each turn K calls back to back, each timed: with the
default 1 every call follows the other framework's, and a jaxadv call after a PyTorch call (or
after 0.2 s idle) was up to 2x slower than one after its own on the smallest ops (SmallGAP's PGD
step 5.0-5.5 vs 2.8-2.9 ms; PyTorch's hardly changed; development measurements, 2026-12-06), while
steps in a loop run back to back. Both frameworks run in this one process, so the glibc ``malloc``
settings that ``import jaxadv`` makes (:mod:`jaxadv.host_memory`: freed memory kept for reuse) hold
for PyTorch too, which allocates its activations with ``malloc`` as well: the comparison is against
PyTorch with that allocator tuning (``config.reuse_host_memory``; ``JAXADV_REUSE_HOST_MEMORY=0``
runs both with glibc's defaults, and ``python -m experiments.benchmarks.host_memory --torch``
measures what the setting gives each framework). ``gflops`` is jaxadv's achieved GFLOP/s, the op's
FLOPs (XLA's cost analysis of the standard lowering: forward, pgd_step, train_step; pgd10 = 10
pgd_step + forward) over its median time, next to ``matmul_peak_gflops``, a 4096^3 float32
``jnp.dot`` timed in the same run.
``gflops_executed`` is the same with the FLOPs of the program jaxadv actually ran (XLA's count of
the fast-path program, its chunk loops counted per trip: :func:`executed_flops`): lower than
``gflops`` where the fast path skips work (the GAP fold, Winograd's 4 multiplies per output
instead of 9), so it, not ``gflops``, is the one to hold against the matmul peak there.

``--host_devices N`` splits the batch over N XLA host devices (default 1; set before JAX
initialises, with ``jaxadv.devices.use_host_devices``); ``--compare_standard`` adds jaxadv with
the fast path off (``jaxadv_std``) as a third contestant, ``--compare_no_rows`` the fast path
without its row-matmul convolution (``jaxadv_no_rows``, see ``fastpath._rows_pay``),
``--compare_no_patches`` without its im2col form for images (``jaxadv_no_patches``),
``--compare_no_taps`` without its sum-over-taps forward pass of one-channel images
(``jaxadv_no_taps``, ``fastpath._taps_pay``),
``--compare_no_fold`` without its GAP fold (``jaxadv_no_fold``: SmallGAP's last convolution feeds
the GAP head directly, so the logits need only its mean over positions, ``fastpath.conv_mean``;
the PyTorch twin computes the whole map), ``--compare_no_phases`` with the input gradient of
strided convolutions as one convolution of the stride-dilated cotangent instead of one per output
phase (``jaxadv_no_phases``, ``fastpath._phases_pay``), ``--compare_no_stored`` with XLA's kernel
gradients transposing the recomputed element-wise producers of a convolution's input instead of
the stored input (``jaxadv_no_stored``, ``fastpath._stored_pay``), ``--compare_no_winograd``
with XLA's convolutions where the fast path computes 3x3 stride-1 layers by Winograd's
F(2x2, 3x3) (``jaxadv_no_winograd``, ``fastpath._winograd_pay``), ``--compare_no_large_winograd``
with Winograd only on the maps the rule took before its image chunks (``jaxadv_small_winograd``,
:func:`winograd_small_maps_only`), ``--compare_no_depth_first`` with a ResNet's stem and first
stage run layer by layer over the whole batch instead of depth first over chunks of images
(``jaxadv_no_depth_first``, ``fastpath.depth_first_images``), ``--compare_no_window_adds``
with the GAP fold's window sums as one reduce per tap instead of chains of adds
(``jaxadv_no_window_adds``, ``fastpath._window_sums``), ``--compare_cumsum_mask``
with the max pool's first-maximum mask taken from a cumulative sum over each window
(``jaxadv_cumsum_mask``: the form
used until 2026-12-05, which XLA:CPU runs as a reduce-window; now an element-wise pass),
``--compare_conv_backend`` the same programs compiled with XLA:CPU's other convolution library
(``jaxadv_ynnpack_conv`` where jaxadv runs Eigen's, ``jaxadv_eigen_conv`` where it runs
YNNPACK's; ``jaxadv.devices.set_cpu_convolution_flags``; through ``compiler_options``, so in the
same process); ``--no_fastpath`` turns it off for the ``jaxadv`` one. ``config.conv_backend``
records which one jaxadv ran (``jaxadv.devices.convolution_backend``).
``--quick``: batch 32, 2 rounds, a 1024^3 matmul (a smoke test, not a measurement).

On a GPU machine: ``--torch_device cuda`` puts the PyTorch twin on the GPU (every PyTorch op is
followed by ``torch.cuda.synchronize()``, as every jaxadv op blocks on its result); jaxadv runs on
JAX's default backend. Each framework keeps its own float32 defaults there (JAX/XLA may use TF32 in
convolutions and matmuls; PyTorch does in cuDNN convolutions, not in matmuls): the settings are
recorded under ``config``. ``--precision highest`` times both in full float32 instead
(``jax_default_matmul_precision='highest'``, PyTorch's TF32 switches off). The parity check always
runs in full float32.
"""

import argparse
import contextlib
import os
import pathlib
import platform
import sys

from experiments import report
from experiments.benchmarks.timing import (
    executed_flops,
    matmul_peak_gflops,
    time_once,
    time_rounds,
    xla_flops,
)

OPS = ("forward", "pgd_step", "pgd10", "train_step")
MODELS = {"smallgap": (28, 28, 1), "poolgap": (28, 28, 1), "preact_resnet18": (32, 32, 3)}
EPS, STEP = 8 / 255, 2 / 255
LR, MOMENTUM = 0.1, 0.9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file for the results.")
    p.add_argument("--quick", action="store_true", help="Smoke test: batch 32, 2 rounds.")
    p.add_argument("--host_devices", type=int, default=1,
                   help="Split the batch over this many XLA host devices (0: one per core, 1: off). "
                   "Default 1, what a notebook that imports jaxadv runs (Eigen's threaded "
                   "convolutions); 8 was the default until 2026-12-06, chosen when one device ran "
                   "YNNPACK's single-threaded ones. docs/performance.md gives 1, 2 and 8.")
    p.add_argument("--models", default=",".join(MODELS), help="Comma-separated subset of "
                   f"{', '.join(MODELS)}.")
    p.add_argument("--ops", default=",".join(OPS), help=f"Comma-separated subset of {OPS}.")
    p.add_argument("--batch", type=int, default=None, help="Batch size (default 128; quick 32).")
    p.add_argument("--repeats", type=int, default=None, help="Timed rounds (default 7; quick 2).")
    p.add_argument("--calls_per_turn", type=int, default=1,
                   help="Calls of each contestant back to back in each round, each timed "
                        "(default 1: every call follows the other framework's).")
    p.add_argument("--repeats_resnet", type=int, default=None,
                   help="Timed rounds for preact_resnet18 (default: --repeats, at most 5).")
    p.add_argument("--compare_standard", action="store_true",
                   help="Also time jaxadv with the fast path off (contestant 'jaxadv_std').")
    p.add_argument("--compare_no_rows", action="store_true",
                   help="Also time jaxadv with the fast path's row-matmul convolution off "
                        "(contestant 'jaxadv_no_rows'; fastpath._rows_pay).")
    p.add_argument("--compare_no_patches", action="store_true",
                   help="Also time jaxadv with the fast path's im2col convolution of images off "
                        "(contestant 'jaxadv_no_patches'; fastpath._patches_pay).")
    p.add_argument("--compare_no_taps", action="store_true",
                   help="Also time jaxadv with the fast path's sum-over-taps forward pass of "
                        "one-channel images off (contestant 'jaxadv_no_taps'; fastpath._taps_pay).")
    p.add_argument("--compare_no_fold", action="store_true",
                   help="Also time jaxadv without the fast path's GAP fold (SmallGAP's last "
                        "convolution averaged without its output map; contestant "
                        "'jaxadv_no_fold'; fastpath._fold_pay).")
    p.add_argument("--compare_no_phases", action="store_true",
                   help="Also time jaxadv with strided convolutions' input gradient as one "
                        "convolution of the dilated cotangent (contestant 'jaxadv_no_phases'; "
                        "fastpath._phases_pay).")
    p.add_argument("--compare_no_stored", action="store_true",
                   help="Also time jaxadv with XLA's kernel gradients reading a recomputed input "
                        "instead of the stored one (contestant 'jaxadv_no_stored'; "
                        "fastpath._stored_pay).")
    p.add_argument("--compare_no_winograd", action="store_true",
                   help="Also time jaxadv with XLA's convolutions where the fast path uses "
                        "Winograd's F(2x2, 3x3) (contestant 'jaxadv_no_winograd'; "
                        "fastpath._winograd_pay).")
    p.add_argument("--compare_no_large_winograd", action="store_true",
                   help="Also time jaxadv with Winograd's F(2x2, 3x3) only where the rule before "
                        "its image chunks took it (maps of at most 8x8 outputs, at least 128 "
                        "channels; contestant 'jaxadv_small_winograd').")
    p.add_argument("--compare_no_depth_first", action="store_true",
                   help="Also time jaxadv with a ResNet's stem and first stage run layer by layer "
                        "over the whole batch (contestant 'jaxadv_no_depth_first'; "
                        "fastpath.depth_first_images).")
    p.add_argument("--compare_no_window_adds", action="store_true",
                   help="Also time jaxadv with the GAP fold's window sums as one reduce per tap "
                        "(contestant 'jaxadv_no_window_adds'; fastpath._window_sums).")
    p.add_argument("--compare_no_taps_stored", action="store_true",
                   help="Also time jaxadv with the one-channel tap sum's output recomputed by its "
                        "consumers (contestant 'jaxadv_no_taps_stored'; "
                        "fastpath._taps_stored_pay).")
    p.add_argument("--compare_cumsum_mask", action="store_true",
                   help="Also time jaxadv with the max pool's first-maximum mask from a cumulative "
                        "sum (contestant 'jaxadv_cumsum_mask'; fastpath._first_max_mask).")
    p.add_argument("--compare_conv_backend", action="store_true",
                   help="Also time jaxadv's programs compiled with XLA:CPU's other convolution "
                        "library (contestant 'jaxadv_ynnpack_conv' or 'jaxadv_eigen_conv'; "
                        "jaxadv.devices.set_cpu_convolution_flags).")
    p.add_argument("--no_fastpath", action="store_true", help="Turn the fast path off.")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch.set_num_threads (0: PyTorch's default).")
    p.add_argument("--torch_device", default="cpu",
                   help="Device of the PyTorch twin: cpu (default) or cuda (on a GPU machine).")
    p.add_argument("--precision", choices=("default", "highest"), default="default",
                   help="float32 matmul/convolution precision of both frameworks while timing: each "
                   "one's default (default) or full float32 (highest: no TF32 on GPUs).")
    args = p.parse_args(argv)
    for name in args.models.split(","):
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    for op in args.ops.split(","):
        if op not in OPS:
            p.error(f"unknown op {op!r}; choose from {OPS}")
    if args.calls_per_turn < 1:
        p.error(f"--calls_per_turn must be at least 1; got {args.calls_per_turn}")
    return args


def torch_sync(device: str):
    """A function that waits for the device's queued PyTorch work (a no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def torch_matmul_gflops(n: int, repeats: int = 5, device: str = "cpu") -> float:
    import torch

    sync = torch_sync(device)
    a = torch.randn(n, n, device=device)
    a @ a
    sync()
    best = min(time_once(lambda: (a @ a, sync())) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def torch_precision(highest: bool) -> dict:
    """Sets PyTorch's TF32 switches (off for ``highest``, PyTorch's defaults otherwise); returns
    the switches in effect."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not highest
    return {"cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


# ----------------------------------------------------------------------------------------------
# jaxadv side


def _op_flops(lowered: dict) -> dict:
    """XLA's FLOP count of the lowered forward, pgd_step and train_step, and pgd10
    (:func:`_with_pgd10`)."""
    return _with_pgd10({op: xla_flops(low) for op, low in lowered.items()})


def _with_pgd10(flops: dict) -> dict:
    """``flops`` (forward, pgd_step, train_step; None where a count is unavailable) with pgd10 as
    10 PGD steps plus the final forward pass."""
    flops = dict(flops)
    flops["pgd10"] = (10 * flops["pgd_step"] + flops["forward"]
                      if flops["pgd_step"] and flops["forward"] else None)
    return flops


def op_definitions(name: str, x_np, y_np, mesh=None) -> dict:
    """The benchmark's ops on model ``name`` and batch (``x_np``, ``y_np``), not yet jitted:
    ``defs`` {op: fn} and ``args`` {op: its arguments} for every op of :data:`OPS`, with the
    model, its train state, eval variables, the batch and the key they use (the batch and state
    placed on ``mesh`` when given). Shared by :func:`jax_ops` and
    :mod:`experiments.benchmarks.profile_ops`."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxadv import sharding
    from jaxadv.attacks import gradient, losses, projections
    from jaxadv.models import get_model
    from jaxadv.training import create_train_state, cross_entropy, make_train_step

    model = get_model(name)
    state = create_train_state(model, optax.sgd(LR, momentum=MOMENTUM), jax.random.key(0),
                               x_np.shape)
    # A copy: train_step donates the state, whose buffers the eval variables would otherwise share
    # (an op timed after train_step, e.g. with --ops train_step,pgd_step, would find them deleted).
    variables = jax.tree.map(jnp.copy, state.eval_variables())
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    mask = jnp.ones(y.shape, jnp.bool_)
    if mesh is not None:
        x, y, mask = sharding.shard_batch((x, y, mask), mesh)
        state = sharding.replicate(state, mesh)
        variables = sharding.replicate(variables, mesh)
    batch = {"image": x, "label": y, "mask": mask}
    key = jax.random.key(0)
    eps, step = jnp.float32(EPS), jnp.float32(STEP)

    def logits(v, x):
        return model.apply(v, x, train=False)

    def input_grad(v, x, y):
        return jax.grad(lambda x: jnp.sum(losses.cross_entropy(logits(v, x), y)))(x)

    def pgd_step(v, x_adv, x, y, eps, step):
        g = input_grad(v, x_adv, y)
        return projections.project_to_feasible(x_adv + step * jnp.sign(g), x, eps, "linf",
                                               (0.0, 1.0))

    def pgd10(v, x, y, key, eps, step):
        return gradient.pgd(lambda z: logits(v, z), x, y, key, eps=eps, step_size=step,
                            num_steps=10, norm="linf", random_start=True).x_adv

    train_step = make_train_step(objective=cross_entropy)
    return {"defs": {"forward": logits, "pgd_step": pgd_step, "pgd10": pgd10,
                     "train_step": train_step},
            "args": {"forward": (variables, x), "pgd_step": (variables, x, x, y, eps, step),
                     "pgd10": (variables, x, y, key, eps, step),
                     "train_step": (state, batch, key)},
            "model": model, "state": state, "variables": variables, "x": x, "y": y,
            "batch": batch, "key": key, "logits": logits, "input_grad": input_grad}


def jax_ops(name: str, x_np, y_np, *, fast: bool, mesh, compiler_options: dict | None = None,
            ops=OPS, count_flops: bool = True,
            definitions: dict | None = None) -> tuple[dict, dict | None, dict]:
    """Compiled jaxadv ops for model ``name`` with the fast path on or off (and XLA
    ``compiler_options`` for every op, e.g. ``jaxadv.devices.CONVOLUTION_BACKEND_OPTIONS``).

    Returns (fns, flops, handles): fns[op]() runs op once and blocks, for each of ``ops`` (a
    subset of :data:`OPS`); flops[op] is XLA's FLOP count of the op's standard lowering and of the
    program that runs (None where unavailable), for every op of :data:`OPS`, and flops is None
    with ``count_flops=False`` (the counts lower each op twice more, and on GPU compile it too:
    contestants whose counts nobody reads skip them); handles has the model, variables and the
    jitted logits and input-gradient functions for the parity checks. ``definitions``: the
    :func:`op_definitions` of the same model and batch, shared by the contestants of one model
    (building them again costs seconds of small eager compiles after each cache clear); the train
    step then starts from its own copy of their state (it donates its state).
    """
    import jax
    import jax.numpy as jnp

    from jaxadv.models import fastpath

    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"jax_ops: unknown ops {sorted(unknown)}; choose from {OPS}.")
    if definitions is None:
        definitions = op_definitions(name, x_np, y_np, mesh)
    else:  # this contestant's train step donates its own copy of the shared state
        state = jax.tree.map(jnp.copy, definitions["state"])
        definitions = {**definitions, "state": state,
                       "args": {**definitions["args"],
                                "train_step": (state, *definitions["args"]["train_step"][1:])}}
    defs, args, state, batch, key = (definitions[k]
                                     for k in ("defs", "args", "state", "batch", "key"))

    flops = None
    if count_flops:
        with fastpath.enabled(False):
            standard = _op_flops({op: jax.jit(defs[op]).lower(*args[op]) for op in OPS
                                  if op != "pgd10"})
        with fastpath.enabled(fast):
            executed = {op: executed_flops(defs[op], args[op]) for op in OPS if op != "pgd10"}
        executed = _with_pgd10(executed)
        flops = {op: (standard[op], executed[op]) for op in standard}

    with fastpath.enabled(fast):
        lowered = {op: jax.jit(defs[op], donate_argnums=(0,) if op == "train_step" else ())
                   .lower(*args[op]) for op in ops}
        compiled = {op: low.compile(compiler_options=compiler_options)
                    for op, low in lowered.items()}
        handles = {"model": definitions["model"], "variables": definitions["variables"],
                   "logits": jax.jit(definitions["logits"]),
                   "input_grad": jax.jit(definitions["input_grad"]),
                   "x": definitions["x"], "y": definitions["y"]}

    carry = {"state": state}

    def run_train():
        carry["state"], metrics = compiled["train_step"](carry["state"], batch, key)
        jax.block_until_ready(metrics)

    fns = {op: (lambda op=op: jax.block_until_ready(compiled[op](*args[op])))
           for op in ops if op != "train_step"}
    if "train_step" in ops:
        fns["train_step"] = run_train
    return fns, flops, handles


# ----------------------------------------------------------------------------------------------
# PyTorch side


def torch_ops(tmodel, x_np, y_np, device: str = "cpu") -> dict:
    """The same four ops on the PyTorch twin (NCHW) on ``device``; each blocks until done. The
    train step runs on a deep copy."""
    import copy

    import torch
    import torch.nn.functional as F

    from jaxadv.interop.torch_port import nhwc_to_nchw

    tmodel = tmodel.to(device)
    x = nhwc_to_nchw(x_np).to(device)
    y = torch.from_numpy(y_np.astype("int64")).to(device)
    eval_model = tmodel.eval()
    for p in eval_model.parameters():
        p.requires_grad_(False)
    train_model = copy.deepcopy(tmodel).train()
    for p in train_model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(train_model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator(device=device).manual_seed(0)

    def forward():
        with torch.no_grad():
            return eval_model(x)

    def grad_and_loss(x_adv):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(eval_model(x_adv), y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), x_adv)
        return g, loss.detach()

    def project(x_adv):
        return torch.clamp(torch.min(torch.max(x_adv, x - EPS), x + EPS), 0.0, 1.0)

    def pgd_step():
        g, _ = grad_and_loss(x)
        return project(x + STEP * g.sign())

    def pgd10():
        x_adv = project(x + torch.empty_like(x).uniform_(-EPS, EPS, generator=gen))
        best, best_loss = x_adv.clone(), torch.full((x.shape[0],), -float("inf"), device=device)

        def keep(x_adv, loss):
            better = loss > best_loss
            best[better] = x_adv[better]
            best_loss[better] = loss[better]

        for _ in range(10):
            g, loss = grad_and_loss(x_adv)
            keep(x_adv, loss)
            x_adv = project(x_adv + STEP * g.sign())
        with torch.no_grad():
            keep(x_adv, F.cross_entropy(eval_model(x_adv), y, reduction="none"))
        return best

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(train_model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    sync = torch_sync(device)

    def blocking(fn):
        def run():
            out = fn()
            sync()
            return out
        return run

    return {op: blocking(fn) for op, fn in
            {"forward": forward, "pgd_step": pgd_step, "pgd10": pgd10, "train_step": train_step}.items()}


def check_parity(name: str, handles: dict, tmodel, x_np, y_np) -> dict:
    """Raises unless logits and input gradients agree; returns their max abs differences."""
    import jax
    import numpy as np
    import torch
    import torch.nn.functional as F

    from jaxadv.interop.torch_port import nchw_to_nhwc, nhwc_to_nchw

    n = min(32, x_np.shape[0])
    tmodel = tmodel.cpu()  # full float32 on both sides: a CPU twin, JAX at 'highest' precision
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(handles["logits"](handles["variables"], handles["x"]))[:n]
        g_ours = np.asarray(handles["input_grad"](handles["variables"], handles["x"],
                                                  handles["y"]))[:n]
    xt = nhwc_to_nchw(x_np[:n]).requires_grad_(True)
    out = tmodel.eval()(xt)
    theirs = out.detach().numpy()
    (gt,) = torch.autograd.grad(F.cross_entropy(out, torch.from_numpy(y_np[:n].astype("int64")),
                                                reduction="sum"), xt)
    g_theirs = nchw_to_nhwc(gt)
    d_logits = float(np.max(np.abs(ours - theirs)))
    # Relative l2 error: in deep ReLU nets a few pre-activations within float32 rounding of 0 take
    # the other side of the kink in one framework, which moves single gradient entries visibly
    # (PreAct ResNet-18 at random init: 1.4e-3, equal with the fast path on and off).
    d_grad = float(np.linalg.norm(g_ours - g_theirs) / max(np.linalg.norm(g_theirs), 1e-30))
    if d_logits > 1e-3 * max(1.0, float(np.max(np.abs(theirs)))) or d_grad > 1e-2:
        raise AssertionError(f"{name}: jaxadv and its PyTorch twin disagree (logits {d_logits:.3g}, "
                             f"input gradient {d_grad:.3g} relative); timings would be meaningless.")
    return {"logits_max_abs_diff": d_logits, "input_grad_rel_l2_diff": d_grad}


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    from jaxadv.devices import use_host_devices

    use_host_devices(args.host_devices or None)
    import jax
    import numpy as np
    import torch

    from jaxadv import host_memory, sharding
    from jaxadv.devices import CONVOLUTION_BACKEND_OPTIONS, convolution_backend
    from jaxadv.interop.torch_port import to_torch
    from jaxadv.models import fastpath

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    torch_flags = torch_precision(args.precision == "highest")
    device = args.torch_device
    batch = args.batch or (32 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 7)
    repeats_resnet = args.repeats_resnet or min(repeats, 5)
    mesh = sharding.data_mesh() if jax.device_count() > 1 else None
    if mesh is not None:
        sharding.check_divisible(batch, mesh)
    ops = args.ops.split(",")
    mm_n = 1024 if args.quick else 4096
    peak_before = matmul_peak_gflops(mm_n)

    results = {"times_ms": {}, "speedup_vs_torch": {}, "gflops": {}, "flops": {}, "parity": {},
               "gflops_executed": {}, "flops_executed": {}}
    if args.compare_standard:
        results["speedup_vs_standard"] = {}
    forms_off = [f for f in _FORMS_OFF if f != "mask" and getattr(args, f"compare_no_{f}")]
    forms_off += ["mask"] if args.compare_cumsum_mask else []
    for form in forms_off:
        results[f"speedup_vs_{off_label(form)}"] = {}
    conv_backend = convolution_backend()
    other_conv = None
    if args.compare_conv_backend:
        other_conv = "ynnpack" if conv_backend == "eigen" else "eigen"
        results[f"speedup_vs_{other_conv}_conv"] = {}
    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        shape = (batch,) + MODELS[name]
        x_np = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        y_np = rng.integers(0, 10, (batch,)).astype(np.int32)
        definitions = op_definitions(name, x_np, y_np, mesh)  # shared by the contestants
        fns, flops, handles = jax_ops(name, x_np, y_np, fast=not args.no_fastpath, mesh=mesh,
                                      ops=ops, definitions=definitions)
        tmodel = to_torch(name, jax.device_get(handles["variables"]))
        results["parity"][name] = check_parity(name, handles, tmodel, x_np, y_np)
        tfns = torch_ops(tmodel, x_np, y_np, device)
        # The contestants' FLOP counts are not reported: they skip them (count_flops=False).
        shared = {"mesh": mesh, "ops": ops, "count_flops": False, "definitions": definitions}
        std = (jax_ops(name, x_np, y_np, fast=False, **shared)[0]
               if args.compare_standard else None)
        without = {}
        for form in forms_off:
            with form_off(form):
                without[form] = jax_ops(name, x_np, y_np, fast=not args.no_fastpath, **shared)[0]
        if other_conv:
            without[other_conv] = jax_ops(name, x_np, y_np, fast=not args.no_fastpath,
                                          compiler_options=CONVOLUTION_BACKEND_OPTIONS[other_conv],
                                          **shared)[0]
        for op in ops:
            contestants = {"jaxadv": fns[op], "torch": tfns[op]}
            if std is not None:
                contestants["jaxadv_std"] = std[op]
            for form, fns_without in without.items():
                contestants[f"jaxadv_{off_label(form)}"] = fns_without[op]
            t = time_rounds(contestants, repeats_resnet if name == "preact_resnet18" else repeats,
                            args.calls_per_turn)
            k = f"{name}/{op}"
            results["times_ms"][k] = t
            results["speedup_vs_torch"][k] = t["torch"]["median"] / t["jaxadv"]["median"]
            if std is not None:
                results["speedup_vs_standard"][k] = t["jaxadv_std"]["median"] / t["jaxadv"]["median"]
            for form in without:
                label = off_label(form)
                results[f"speedup_vs_{label}"][k] = (t[f"jaxadv_{label}"]["median"]
                                                     / t["jaxadv"]["median"])
            seconds = t["jaxadv"]["median"] / 1e3
            (results["flops"][k], results["flops_executed"][k]) = flops[op]
            results["gflops"][k], results["gflops_executed"][k] = (
                f / seconds / 1e9 if f else None for f in flops[op])
            extra = (f"  std {t['jaxadv_std']['median']:8.1f} ms" if std is not None else "")
            for form in without:
                label = off_label(form)
                extra += f"  {label} {t[f'jaxadv_{label}']['median']:8.1f} ms"
            print(f"{k:28s} jaxadv {t['jaxadv']['median']:8.1f} ms  torch {t['torch']['median']:8.1f}"
                  f" ms  x{results['speedup_vs_torch'][k]:5.2f}{extra}  "
                  f"{results['gflops'][k] or float('nan'):6.1f} GFLOP/s", flush=True)
    peak_after = matmul_peak_gflops(mm_n)
    results["matmul_peak_gflops"] = max(peak_before, peak_after)
    results["matmul_peak_gflops_before_after"] = [peak_before, peak_after]
    results["torch_matmul_gflops"] = torch_matmul_gflops(mm_n, device=device)
    results["config"] = {
        "batch": batch, "repeats": repeats, "repeats_resnet": repeats_resnet,
        "calls_per_turn": args.calls_per_turn,
        "host_devices": jax.device_count(), "fastpath": fastpath.is_enabled() and not args.no_fastpath,
        "matmul_n": mm_n, "quick": args.quick, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
        "platform": platform.platform(), "backend": jax.default_backend(),
        "devices": str(jax.devices()[0].device_kind), "argv": sys.argv[1:] if argv is None else argv,
        "command": report.command("experiments.benchmarks.step_speed", argv),
        "torch_device": device, "precision": args.precision, "conv_backend": conv_backend,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "reuse_host_memory": host_memory.is_applied(),
        "cpu_inline_dispatch": host_memory.runs_inline(),
        "jax_default_matmul_precision": getattr(jax.config, "jax_default_matmul_precision", None),
        **torch_flags,
    }
    if device != "cpu":
        results["config"]["torch_device_name"] = torch.cuda.get_device_name(device)
    print(format_table(results))
    if args.out:
        report.write_json(args.out, results)
    return results


def cumsum_first_max_mask(blocks, out):
    """The max pool's first-maximum mask as jaxadv computed it until 2026-12-05: the window's
    equalities flattened and kept where their cumulative sum is 1 (a reduce-window in XLA:CPU)."""
    import jax.numpy as jnp

    b, ho, k, wo, _, c = blocks.shape
    eq = blocks == out[:, :, None, :, None, :]
    flat = eq.transpose(0, 1, 3, 5, 2, 4).reshape(b, ho, wo, c, k * k)
    first = flat & (jnp.cumsum(flat.astype(jnp.int32), axis=-1) == 1)
    return first.reshape(b, ho, wo, c, k, k).transpose(0, 1, 4, 2, 5, 3)


def _never_chunked(*args, **kwargs) -> None:
    """Stands in for ``fastpath.depth_first_images``: no image chunks."""
    return None


def _always_false(*args) -> bool:
    return False


def window_sums_by_reduce(*args):
    """``fastpath._window_sums`` as it was until 2026-12-06: one strided slice and one reduce per
    tap, in the value too (``fastpath._window_sums_by_reduce``)."""
    from jaxadv.models import fastpath

    return fastpath._window_sums_by_reduce(*args)


def winograd_small_maps_only(in_hw, w_shape, strides, pads, dilation, op, *,
                             ynnpack=None) -> bool:
    """``fastpath._winograd_pay`` as it was before Winograd's image chunks (2026-12-06,
    afternoon): 3x3 stride-1 layers with at most 8x8 outputs and at least 128 channels in and
    out, where Eigen runs the convolutions, for all three ops."""
    from jaxadv.models import fastpath

    _, (ho, wo) = fastpath._winograd_grid(in_hw, pads)
    if ynnpack is None:
        ynnpack = fastpath._ynnpack_convolutions()
    return (fastpath._winograd_applies(w_shape, strides, pads, dilation) and ho * wo <= 64
            and min(w_shape[2:]) >= 128 and not ynnpack)


# form -> (fastpath attribute replaced while the contestant compiles, its replacement, contestant
# label: timings under "jaxadv_<label>", ratios under "speedup_vs_<label>").
_FORMS_OFF = {
    "rows": ("_rows_pay", _always_false, "no_rows"),
    "patches": ("_patches_pay", _always_false, "no_patches"),
    "taps": ("_taps_pay", _always_false, "no_taps"),
    "fold": ("_fold_pay", _always_false, "no_fold"),
    "phases": ("_phases_pay", _always_false, "no_phases"),
    "stored": ("_stored_pay", _always_false, "no_stored"),
    "taps_stored": ("_taps_stored_pay", _always_false, "no_taps_stored"),
    "winograd": ("_winograd_pay", _always_false, "no_winograd"),
    "large_winograd": ("_winograd_pay", winograd_small_maps_only, "small_winograd"),
    "depth_first": ("depth_first_images", _never_chunked, "no_depth_first"),
    "window_adds": ("_window_sums", window_sums_by_reduce, "no_window_adds"),
    "mask": ("_first_max_mask", cumsum_first_max_mask, "cumsum_mask"),
}


def off_label(form: str) -> str:
    """The contestant label of a fast-path form turned off (``form_off``) or of a convolution
    backend (``"eigen"``, ``"ynnpack"``): timings under ``"jaxadv_<label>"``."""
    return f"{form}_conv" if form in ("eigen", "ynnpack") else _FORMS_OFF[form][2]


@contextlib.contextmanager
def form_off(form: str):
    """The fast path without one of its forms, while jaxadv's ops are traced and compiled (JAX's
    caches cleared on entry and exit): ``"rows"`` (``fastpath._rows_pay``), ``"patches"``
    (``fastpath._patches_pay``), ``"taps"`` (``fastpath._taps_pay``), ``"fold"``
    (``fastpath._fold_pay``: SmallGAP's GAP fold), ``"phases"`` (``fastpath._phases_pay``),
    ``"stored"`` (``fastpath._stored_pay``), ``"taps_stored"`` (``fastpath._taps_stored_pay``) or
    ``"winograd"`` (``fastpath._winograd_pay``)
    always False, ``"depth_first"``: a ResNet's first stage layer by layer over the whole batch
    (``fastpath.depth_first_images`` always None), ``"large_winograd"``: Winograd only where
    :func:`winograd_small_maps_only` takes it, ``"window_adds"``: the GAP fold's window sums by
    :func:`window_sums_by_reduce`, or ``"mask"``: the max pool's first-maximum mask by
    :func:`cumsum_first_max_mask`."""
    import jax

    from jaxadv.models import fastpath

    attr, replacement, _ = _FORMS_OFF[form]
    original = getattr(fastpath, attr)
    setattr(fastpath, attr, replacement)
    jax.clear_caches()
    try:
        yield
    finally:
        setattr(fastpath, attr, original)
        jax.clear_caches()


def format_table(results: dict) -> str:
    """A Markdown table of the results."""
    std = "speedup_vs_standard" in results
    head = ("| model/op | jaxadv ms (IQR) | PyTorch ms (IQR) | speedup | GFLOP/s (model) | "
            "GFLOP/s executed | % of matmul peak |")
    head += " fast path gain |" if std else ""
    lines = [head, "|" + "---|" * (8 if std else 7)]
    peak = results.get("matmul_peak_gflops")
    for k, t in results["times_ms"].items():
        j, tt = t["jaxadv"], t["torch"]
        gf = results["gflops"][k]
        ex = results.get("gflops_executed", {}).get(k) or gf
        row = (f"| {k} | {j['median']:.1f} ({j['q25']:.0f}-{j['q75']:.0f}) | {tt['median']:.1f} "
               f"({tt['q25']:.0f}-{tt['q75']:.0f}) | {results['speedup_vs_torch'][k]:.2f} | "
               f"{gf:.1f} | {ex:.1f} | {100 * ex / peak:.0f}% |" if gf and peak else
               f"| {k} | {j['median']:.1f} | {tt['median']:.1f} | "
               f"{results['speedup_vs_torch'][k]:.2f} | - | - | - |")
        if std:
            row += f" {results['speedup_vs_standard'][k]:.2f} |"
        lines.append(row)
    if peak:
        lines.append(f"\nfloat32 matmul peak (jnp.dot {results.get('config', {}).get('matmul_n')}^3): "
                     f"{peak:.0f} GFLOP/s; PyTorch: {results.get('torch_matmul_gflops', 0):.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
