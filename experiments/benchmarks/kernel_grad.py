"""Kernel-gradient benchmark: the fast path's kernel gradients against XLA:CPU's own.

    python -m experiments.benchmarks.kernel_grad [--batches 16 64 128] [--repeats 7] [--out FILE]

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
"""

import argparse
import json
import pathlib
import statistics
import time

# (name, height = width, input channels, output channels, kernel, stride)
LAYERS = (
    ("smallgap conv1", 28, 1, 16, 4, 2), ("smallgap conv2", 14, 16, 32, 4, 2),
    ("smallgap conv3", 7, 32, 100, 7, 1),
    ("poolgap conv1", 28, 1, 32, 5, 1), ("poolgap conv2", 14, 32, 64, 5, 1),
    ("cnn conv2", 26, 32, 64, 3, 1),
    ("resnet stem", 32, 3, 64, 3, 1), ("resnet 32x32x64", 32, 64, 64, 3, 1),
    ("resnet 16x16x128", 16, 128, 128, 3, 1), ("resnet 32x32x64 s2", 32, 64, 128, 3, 2),
)
METHODS = ("columns", "taps", "xla")


def time_call(fn, *args, repeats: int) -> float:
    """Median wall milliseconds over ``repeats`` calls after a warm-up call."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_layer(batch: int, layer: tuple, repeats: int, methods=METHODS) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxadv.models import fastpath

    name, hw, cin, cout, k, stride = layer
    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin))
    w = 0.05 * jax.random.normal(jax.random.key(1), (k, k, cin, cout))
    rule = fastpath._kernel_grad_method(x.shape, w.shape, (stride, stride))
    original = fastpath._kernel_grad_method
    ms, grads = {}, {}
    try:
        with fastpath.enabled(True):
            for method in methods:
                fastpath._kernel_grad_method = lambda *a, m=method: m
                jax.clear_caches()

                def loss(w, x):
                    y = fastpath.conv_general_dilated(
                        x, w, (stride, stride), "SAME",
                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
                    return jnp.sum(jnp.tanh(y))

                fn = jax.jit(jax.grad(loss))
                grads[method] = np.asarray(fn(w, x))
                ms[f"{method}_ms"] = time_call(fn, w, x, repeats=repeats)
    finally:
        fastpath._kernel_grad_method = original
        jax.clear_caches()
    ref = grads[methods[-1]]
    err = max(float(np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-30)) for g in grads.values())
    out = {"batch": batch, "layer": f"{name}: {hw}x{hw}x{cin}->{cout}, {k}x{k}, stride {stride}",
           **ms, "max_rel_diff": err, "rule": rule}
    for m in methods:
        if m != "xla" and "xla_ms" in ms:
            out[f"xla_over_{m}"] = ms["xla_ms"] / ms[f"{m}_ms"]
    return out


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layers", type=int, default=len(LAYERS),
                   help="how many of the layer shapes to run (a smoke test runs 1)")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    rows = []
    print("| batch | layer | columns ms | taps ms | XLA ms | XLA / columns | XLA / taps | rule |\n"
          "|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        for layer in LAYERS[:args.layers]:
            r = bench_layer(batch, layer, args.repeats)
            rows.append(r)
            print(f"| {r['batch']} | {r['layer']} | {r['columns_ms']:.2f} | {r['taps_ms']:.2f} | "
                  f"{r['xla_ms']:.2f} | {r['xla_over_columns']:.2f} | {r['xla_over_taps']:.2f} | "
                  f"{r['rule']} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "repeats": args.repeats}, indent=1))
    return rows


if __name__ == "__main__":
    main()
