"""Kernel-gradient benchmark: the fast path's per-tap kernel gradient against XLA:CPU's own.

    python -m experiments.benchmarks.kernel_grad [--batches 16 128] [--repeats 7] [--out FILE]

For each layer shape (3x3 kernel, SAME padding, float32, NHWC) and batch, the gradient of
``sum(tanh(conv(x, w)))`` with respect to the kernel ``w`` is jitted twice with the fast path on:
once with the per-tap kernel gradient forced (``_taps_pay`` patched to True) and once with XLA's
backward-filter convolution (patched to False); JAX's caches are cleared between the two. The
median of ``--repeats`` calls after a warm-up call is reported, and ``ratio`` = XLA time /
per-tap time (above 1: per-tap is faster). ``rule`` is what :func:`jaxadv.models.fastpath._taps_pay`
decides for the shape on one device. The layers are those of SmallGAP (28x28x1->32, 26x26x32->64)
and PreAct ResNet-18 (32x32x3->64, 32x32x64->64, 16x16x128->128, 32x32x64->128 stride 2). Runs
on one device; the batch stands for the batch per device.
"""

import argparse
import json
import pathlib
import statistics
import time

LAYERS = ((28, 1, 32, 1), (26, 32, 64, 1), (32, 3, 64, 1), (32, 64, 64, 1), (16, 128, 128, 1),
          (32, 64, 128, 2))  # (height = width, input channels, output channels, stride)


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


def bench_layer(batch: int, hw: int, cin: int, cout: int, stride: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxadv.models import fastpath

    x = jax.random.normal(jax.random.key(0), (batch, hw, hw, cin))
    w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
    rule = fastpath._taps_pay(x.shape, w.shape, (stride, stride))
    original = fastpath._taps_pay
    ms = {}
    try:
        with fastpath.enabled(True):
            for name, taps in (("per_tap_ms", True), ("xla_ms", False)):
                fastpath._taps_pay = lambda *a, taps=taps: taps
                jax.clear_caches()

                def loss(w, x):
                    y = fastpath.conv_general_dilated(
                        x, w, (stride, stride), ((1, 1), (1, 1)),
                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
                    return jnp.sum(jnp.tanh(y))

                ms[name] = time_call(jax.jit(jax.grad(loss)), w, x, repeats=repeats)
    finally:
        fastpath._taps_pay = original
        jax.clear_caches()
    return {"batch": batch, "layer": f"{hw}x{hw}x{cin}->{cout}, stride {stride}", **ms,
            "ratio": ms["xla_ms"] / ms["per_tap_ms"], "rule": rule}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layers", type=int, default=len(LAYERS),
                   help="how many of the layer shapes to run (a smoke test runs 1)")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    rows = []
    print("| batch | layer | per-tap ms | XLA ms | XLA / per-tap | rule |\n|---|---|---|---|---|---|")
    for batch in args.batches:
        for hw, cin, cout, stride in LAYERS[:args.layers]:
            r = bench_layer(batch, hw, cin, cout, stride, args.repeats)
            rows.append(r)
            print(f"| {r['batch']} | {r['layer']} | {r['per_tap_ms']:.2f} | {r['xla_ms']:.2f} | "
                  f"{r['ratio']:.2f} | {'per-tap' if r['rule'] else 'XLA'} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "repeats": args.repeats}, indent=1))
    return rows


if __name__ == "__main__":
    main()
