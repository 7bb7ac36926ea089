"""Kernel-gradient benchmark: the fast path's kernel gradients against XLA:CPU's own.

    python -m experiments.benchmarks.kernel_grad [--batches 16 64 128] [--repeats 7] [--out FILE]
    python -m experiments.benchmarks.kernel_grad --train_steps poolgap preact_resnet18 \
        --host_devices 2 [--out FILE]
    python -m experiments.benchmarks.kernel_grad --forms [--batches 128] [--conv_backend eigen] \
        [--layer_names 'resnet 8x8,resnet 4x4'] [--out FILE]

For each layer shape (SAME padding, float32, NHWC) and batch, the gradient of
``sum(tanh(conv(x, w)))`` with respect to the kernel ``w`` is jitted with the fast path on and
each kernel-gradient method forced in turn (``fastpath._kernel_grad_method`` patched; JAX's caches
cleared between methods): ``columns`` (one matmul per kernel column over the row-shifted views
concatenated along channels), ``taps`` (one matmul per kernel tap) and ``xla`` (XLA's
backward-filter convolution). The median of ``--repeats`` calls after a warm-up call is reported
in ms, with ``xla / columns`` and ``xla / taps`` (above 1: faster than XLA), and ``rule``, what
:func:`jaxadv.models.fastpath._kernel_grad_method` picks for the shape on one device. The layers
are those of SmallGAP, PoolGAP, a 2-conv CNN and PreAct ResNet-18. Runs on one device; the batch
stands for the batch per device.

``--train_steps MODEL ...`` instead times whole train steps (batch 128, cross-entropy, Adam) on
``--host_devices`` XLA host devices (the batch split over them), with the kernel gradient the
rule picks (``rule``) against XLA's everywhere (``xla``), interleaved, medians after a warm-up
call: what decides the rule, since single layers on one device overstate the gain.

``--forms`` times, for each layer and batch, the forward pass, the input gradient and the kernel
gradient (each a jitted linear map, ms) in the forms that apply: XLA's convolutions (``xla``; the input
gradient with the fast path's HWIO kernel), im2col (``patches``, :func:`fastpath._patches_conv`
and its transposes), the sum over kernel taps (``taps``, :func:`fastpath._taps_conv`, one-channel
layers only: with more channels its tap products are matmuls) and one matmul per output row
(``rows``, :func:`fastpath._rows_conv`, stride 1 only), for the input gradient of strided
layers one stride-1 convolution per output phase (``phases``, :func:`fastpath._phase_input_grad`;
``xla`` is then the convolution of the stride-dilated cotangent) and, for 3x3 stride-1 layers,
Winograd's F(2x2, 3x3) (``winograd``, :func:`fastpath._winograd_conv`; its input gradient
:func:`fastpath._winograd_input_grad`, its kernel gradient :func:`fastpath._winograd_kernel_grad`),
with the form
:func:`fastpath._winograd_pay` / :func:`fastpath._rows_pay` / :func:`fastpath._taps_pay` /
:func:`fastpath._patches_pay` / :func:`fastpath._phases_pay` pick on one device (``picked``).
``--conv_backend eigen`` or ``ynnpack`` compiles every form with that library's convolutions
(:data:`jaxadv.devices.CONVOLUTION_BACKEND_OPTIONS`; default: the process's setting). The forced
method comparisons above run with these forms off.
"""

import argparse
import contextlib
import pathlib
import statistics
import time

from experiments import report
from experiments.benchmarks.timing import median_seconds

# (name, height = width, input channels, output channels, kernel, stride)
LAYERS = (
    ("smallgap conv1", 28, 1, 16, 4, 2), ("smallgap conv2", 14, 16, 32, 4, 2),
    ("smallgap conv3", 7, 32, 100, 7, 1),
    ("poolgap conv1", 28, 1, 32, 5, 1), ("poolgap conv2", 14, 32, 64, 5, 1),
    ("cnn conv2", 26, 32, 64, 3, 1),
    ("resnet stem", 32, 3, 64, 3, 1), ("resnet 32x32x64", 32, 64, 64, 3, 1),
    ("resnet 16x16x128", 16, 128, 128, 3, 1), ("resnet 32x32x64 s2", 32, 64, 128, 3, 2),
    ("resnet 8x8x256", 8, 256, 256, 3, 1), ("resnet 4x4x512", 4, 512, 512, 3, 1),
)
METHODS = ("columns", "taps", "xla")


def time_call(fn, *args, repeats: int) -> float:
    """Median wall milliseconds of ``fn(*args)`` over ``repeats`` calls after a warm-up call."""
    import jax

    return 1e3 * median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats=repeats)


@contextlib.contextmanager
def kernel_grad_rule(rule):
    """The fast path on, with ``fastpath._kernel_grad_method`` replaced by ``rule`` (None: the
    library's own; a rule also turns the row, taps and im2col forms off) and JAX's caches cleared on
    the way in and out, so that what is traced inside uses it."""
    import jax

    from jaxadv.models import fastpath

    original = (fastpath._kernel_grad_method, fastpath._rows_pay, fastpath._patches_pay,
                fastpath._taps_pay)
    if rule is not None:  # a forced method: the row, taps and im2col forms off too
        fastpath._kernel_grad_method = rule
        fastpath._rows_pay = fastpath._patches_pay = fastpath._taps_pay = lambda *a: False
    jax.clear_caches()
    try:
        with fastpath.enabled(True):
            yield
    finally:
        (fastpath._kernel_grad_method, fastpath._rows_pay, fastpath._patches_pay,
         fastpath._taps_pay) = original
        jax.clear_caches()


def bench_layer(batch: int, layer: tuple, repeats: int, methods=METHODS) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxadv.models import fastpath

    name, hw, cin, cout, k, stride = layer
    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin))
    w = 0.05 * jax.random.normal(jax.random.key(1), (k, k, cin, cout))
    rule = fastpath._kernel_grad_method(x.shape, w.shape, (stride, stride))
    ms, grads = {}, {}
    for method in methods:
        with kernel_grad_rule(lambda *a, m=method: m):

            def loss(w, x):
                y = fastpath.conv_general_dilated(
                    x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                return jnp.sum(jnp.tanh(y))

            fn = jax.jit(jax.grad(loss))
            grads[method] = np.asarray(fn(w, x))
            ms[f"{method}_ms"] = time_call(fn, w, x, repeats=repeats)
    ref = grads[methods[-1]]
    err = max(float(np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-30)) for g in grads.values())
    out = {"batch": batch, "layer": f"{name}: {hw}x{hw}x{cin}->{cout}, {k}x{k}, stride {stride}",
           **ms, "max_rel_diff": err, "rule": rule}
    for m in methods:
        if m != "xla" and "xla_ms" in ms:
            out[f"xla_over_{m}"] = ms["xla_ms"] / ms[f"{m}_ms"]
    return out


def bench_forms(batch: int, layer: tuple, repeats: int, conv_backend: str | None = None
                ) -> list[dict]:
    """Forward, input gradient and kernel gradient of one layer in XLA's, the im2col, the taps and
    the row form: one row per op with ``<form>_ms`` (None where the form does not apply) and
    ``picked``; compiled with ``conv_backend``'s convolutions where given."""
    import jax
    import numpy as np
    from jax import lax

    from jaxadv.devices import CONVOLUTION_BACKEND_OPTIONS
    from jaxadv.models import fastpath

    options = CONVOLUTION_BACKEND_OPTIONS[conv_backend] if conv_backend else None

    name, hw, cin, cout, k, stride = layer
    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin))
    w = 0.05 * jax.random.normal(jax.random.key(1), (k, k, cin, cout))
    strides, dil = (stride, stride), (1, 1)
    pads = tuple(tuple(p) for p in lax.padtype_to_pads((hw, hw), (k, k), strides, "SAME"))
    convs = {"xla": lambda x, w: fastpath._std_conv(x, w, strides, pads, dil, None, None),
             "patches": lambda x, w: fastpath._patches_conv(x, w, strides, pads, dil, None)}
    if cin == 1:
        convs["taps"] = lambda x, w: fastpath._taps_conv(x, w, strides, pads, dil, None, None)
    rows_ratio = fastpath._rows_flop_ratio((hw, hw), (k, k), strides, pads, dil)
    if rows_ratio < float("inf"):
        convs["rows"] = lambda x, w: fastpath._rows_conv(x, w, pads, None)
    if fastpath._winograd_applies((k, k), strides, pads, dil):
        convs["winograd"] = lambda x, w: fastpath._winograd_conv(x, w, pads, None)
    g = jax.random.normal(jax.random.key(2), convs["xla"](x, w).shape)
    x_sd, w_sd = jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype)
    rows_pay = rows_ratio <= fastpath._ROWS_MAX_FLOP_RATIO
    out = []
    for op in ("forward", "input", "kernel"):
        r = {"batch": batch, "layer": f"{name}: {hw}x{hw}x{cin}->{cout}, {k}x{k}, stride {stride}",
             "op": op, "rows_ms": None, "taps_ms": None, "phases_ms": None, "winograd_ms": None,
             "conv_backend": conv_backend}
        results = {}
        forms = dict(convs)
        if op == "input" and stride > 1:
            forms["phases"] = None
        for form, conv in forms.items():
            if op == "forward":
                fn, args = jax.jit(conv), (x, w)
            elif op == "input" and form in ("xla", "phases"):
                if form == "xla":
                    fn = jax.jit(lambda g, w: fastpath._dilated_input_grad(
                        g, w, (hw, hw), strides, pads, dil, None))
                else:
                    fn = jax.jit(lambda g, w: fastpath._phase_input_grad(
                        g, w, (hw, hw), strides, pads, None))
                args = (g, w)
            elif op == "input" and form == "winograd":
                fn = jax.jit(lambda g, w: fastpath._winograd_input_grad(g, w, pads, None))
                args = (g, w)
            elif op == "input":
                fn = jax.jit(lambda g, w, c=conv: jax.linear_transpose(
                    lambda v: c(v, w), x_sd)(g)[0])
                args = (g, w)
            elif form == "winograd":
                fn = jax.jit(lambda x, g: fastpath._winograd_kernel_grad(x, g, pads, None))
                args = (x, g)
            else:
                fn = jax.jit(lambda x, g, c=conv: jax.linear_transpose(
                    lambda v: c(x, v), w_sd)(g)[0])
                args = (x, g)
            fn = fn.lower(*args).compile(options)
            results[form] = np.asarray(fn(*args))
            r[f"{form}_ms"] = time_call(fn, *args, repeats=repeats)
        ref = results["xla"]
        r["max_rel_diff"] = max(float(np.abs(v - ref).max() / max(np.abs(ref).max(), 1e-30))
                                for v in results.values())
        taps_pay = fastpath._taps_pay(
            cin, cout, op, ynnpack=None if conv_backend is None else conv_backend == "ynnpack")
        winograd_pay = fastpath._winograd_pay(
            (hw, hw), (k, k, cin, cout), strides, pads, dil, op,
            ynnpack=None if conv_backend is None else conv_backend == "ynnpack")
        r["picked"] = ("winograd" if winograd_pay else "rows" if rows_pay else
                       "taps" if taps_pay else
                       "patches" if fastpath._patches_pay(cin, op) else
                       "phases" if op == "input" and fastpath._phases_pay(strides, dil) else "xla")
        out.append(r)
    return out


def bench_train_step(name: str, repeats: int) -> dict:
    """One model's train step with the rule's kernel gradients vs XLA's on every layer."""
    import jax
    import numpy as np
    import optax

    from jaxadv import sharding
    from jaxadv.models import get_model
    from jaxadv.training import create_train_state, cross_entropy, make_train_step

    shape = (128, 32, 32, 3) if "resnet" in name else (128, 28, 28, 1)
    mesh = sharding.data_mesh()
    state = sharding.replicate(create_train_state(
        get_model(name), optax.adam(1e-3), jax.random.key(0), (1,) + shape[1:]), mesh)
    rng = np.random.default_rng(0)
    batch = sharding.shard_batch({"image": rng.random(shape, np.float32),
                                  "label": np.arange(shape[0]) % 10,
                                  "mask": np.ones(shape[0], bool)}, mesh)
    compiled = {}
    for arm, rule in (("rule", None), ("xla", lambda *a: "xla")):
        with kernel_grad_rule(rule):
            step = jax.jit(make_train_step(objective=cross_entropy))
            compiled[arm] = step.lower(state, batch, jax.random.key(1)).compile()
    times = {arm: [] for arm in compiled}
    for fn in compiled.values():
        jax.block_until_ready(fn(state, batch, jax.random.key(1)))  # warm-up
    for _ in range(repeats):
        for arm, fn in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, batch, jax.random.key(1)))
            times[arm].append(time.perf_counter() - t0)
    ms = {f"{arm}_ms": 1e3 * statistics.median(v) for arm, v in times.items()}
    return {"model": name, "devices": jax.device_count(), **ms,
            "xla_over_rule": ms["xla_ms"] / ms["rule_ms"]}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layers", type=int, default=len(LAYERS),
                   help="how many of the layer shapes to run (a smoke test runs 1)")
    p.add_argument("--layer_names", default=None,
                   help="comma-separated substrings: run only layers whose name holds one "
                        "(e.g. 'resnet 8x8,resnet 4x4')")
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--train_steps", nargs="+", default=None, metavar="MODEL",
                   help="time whole train steps of these models instead of single layers")
    p.add_argument("--host_devices", type=int, default=1,
                   help="XLA host devices for --train_steps (set before JAX initialises)")
    p.add_argument("--forms", action="store_true",
                   help="time forward, input and kernel gradients in XLA's, im2col, taps, "
                        "row and Winograd form")
    p.add_argument("--conv_backend", choices=("eigen", "ynnpack"), default=None,
                   help="with --forms: compile every form with this library's convolutions")
    args = p.parse_args(argv)
    selected = LAYERS[:args.layers]
    if args.layer_names:
        names = [n.strip() for n in args.layer_names.split(",")]
        selected = [layer for layer in selected if any(n in layer[0] for n in names)]
    rows = []
    if args.forms:
        print("| batch | layer | op | XLA ms | im2col ms | taps ms | rows ms | phases ms "
              "| Winograd ms | picked |\n|---|---|---|---|---|---|---|---|---|---|")
        for batch in args.batches:
            for layer in selected:
                for r in bench_forms(batch, layer, args.repeats, args.conv_backend):
                    rows.append(r)
                    opt = {f: "" if r[f"{f}_ms"] is None else f"{r[f'{f}_ms']:.2f}"
                           for f in ("taps", "rows", "phases", "winograd")}
                    print(f"| {r['batch']} | {r['layer']} | {r['op']} | {r['xla_ms']:.2f} | "
                          f"{r['patches_ms']:.2f} | {opt['taps']} | {opt['rows']} | "
                          f"{opt['phases']} | {opt['winograd']} | {r['picked']} |", flush=True)
        if args.out:
            from jaxadv.devices import convolution_backend

            report.write_json(args.out, {"forms": rows, "repeats": args.repeats,
                                         "conv_backend": args.conv_backend or convolution_backend(),
                                         "command": report.command(
                                             "experiments.benchmarks.kernel_grad", argv)})
        return rows
    if args.train_steps:
        from jaxadv.devices import use_host_devices

        use_host_devices(args.host_devices)
        print("| model | devices | rule ms | XLA ms | XLA / rule |\n|---|---|---|---|---|")
        for name in args.train_steps:
            r = bench_train_step(name, args.repeats)
            rows.append(r)
            print(f"| {name} | {r['devices']} | {r['rule_ms']:.1f} | {r['xla_ms']:.1f} | "
                  f"{r['xla_over_rule']:.2f} |", flush=True)
        if args.out:
            report.write_json(args.out, {"train_steps": rows, "repeats": args.repeats})
        return rows
    print("| batch | layer | columns ms | taps ms | XLA ms | XLA / columns | XLA / taps | rule |\n"
          "|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        for layer in selected:
            r = bench_layer(batch, layer, args.repeats)
            rows.append(r)
            print(f"| {r['batch']} | {r['layer']} | {r['columns_ms']:.2f} | {r['taps_ms']:.2f} | "
                  f"{r['xla_ms']:.2f} | {r['xla_over_columns']:.2f} | {r['xla_over_taps']:.2f} | "
                  f"{r['rule']} |", flush=True)
    if args.out:
        report.write_json(args.out, {"rows": rows, "repeats": args.repeats})
    return rows


if __name__ == "__main__":
    main()
