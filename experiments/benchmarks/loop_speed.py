"""Cost of one PGD step inside ``lax.fori_loop`` vs unrolled, with and without the CPU fast path.

    python -m experiments.benchmarks.loop_speed --out results/loop_speed.json

Every jaxadv attack runs its steps in a ``lax.fori_loop``. XLA:CPU compiles the input-gradient
convolution of a loop body with the kernel's dimensions swapped (``01oi``, JAX's transpose rule)
and runs it about 2.5x slower than the same step in straight-line code;
``jaxadv.models.fastpath`` writes that convolution with an explicit HWIO kernel instead. This script
measures ms per sign-gradient step (cross-entropy input gradient, step, clip) for SmallGAP and
PoolGAP at a given batch, for the four combinations of {fast path on, off} x {loop, unrolled}, and
writes {"<model>": {"fast/loop": ms, "fast/unrolled": ms, "standard/loop": ms,
"standard/unrolled": ms, "first_call_s": {variant: seconds to trace, compile and run once}}} with
the settings. Weights are random (the cost does not depend on them).

``--second_order`` adds, under the key "<model>/second_order", the same four variants of a step on
a second-order objective: the gradient, in the input, of the l1 norm of the integrated gradients
of the cross-entropy along 5 points of the path from the clean image (IG-Norm's inner attack,
``jaxadv.training.interpretability``). With JAX's rules that double backprop puts a ``01oi``
convolution back into the loop; the fast path's pair of primitives keeps it out.
"""

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments import report
from jaxadv.models import fastpath, get_model, init_variables

IG_POINTS = 5


def step_fns(model, num_steps: int, second_order: bool = False) -> dict:
    """``{"loop" | "unrolled": jitted (variables, x, y) -> x after num_steps sign steps}``, traced
    under the fast-path setting in effect when they are first called. The step ascends the
    cross-entropy, or (``second_order``) the l1 norm of its integrated gradients from x0 (the
    starting point) to z over ``IG_POINTS`` right-Riemann points."""

    def loss(v, z, y):
        logp = jax.nn.log_softmax(model.apply(v, z))
        return -jnp.sum(jnp.take_along_axis(logp, y[:, None], 1))

    def ig_norm(v, z, y, x0):
        alphas = jnp.arange(1, IG_POINTS + 1, dtype=z.dtype) / IG_POINTS
        grads = jax.vmap(lambda a: jax.grad(loss, argnums=1)(v, x0 + a * (z - x0), y))(alphas)
        return jnp.sum(jnp.abs((z - x0) * jnp.mean(grads, axis=0)))

    def step(v, z, y, x0):
        g = (jax.grad(ig_norm, argnums=1)(v, z, y, x0) if second_order
             else jax.grad(loss, argnums=1)(v, z, y))
        return jnp.clip(z + 0.01 * jnp.sign(g), 0.0, 1.0)

    def unrolled(v, z, y):
        x0 = z
        z = jnp.clip(z + 0.01, 0.0, 1.0)  # off the starting point, so the IG path is not empty
        for _ in range(num_steps):
            z = step(v, z, y, x0)
        return z

    def loop(v, z, y):
        x0 = z
        return lax.fori_loop(0, num_steps, lambda i, z: step(v, z, y, x0),
                             jnp.clip(z + 0.01, 0.0, 1.0))

    return {"loop": jax.jit(loop), "unrolled": jax.jit(unrolled)}


def measure(name: str, *, batch: int, num_steps: int, repeats: int,
            second_order: bool = False) -> dict:
    model = get_model(name)
    key = jax.random.key(0)
    v = init_variables(model, key, (1, 28, 28, 1))
    x = jax.random.uniform(jax.random.fold_in(key, 1), (batch, 28, 28, 1))
    y = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, 10)
    fns, first = {}, {}
    for mode, flag in (("fast", True), ("standard", False)):
        with fastpath.enabled(flag):
            for kind, fn in step_fns(model, num_steps, second_order).items():
                tic = time.perf_counter()
                jax.block_until_ready(fn(v, x, y))  # trace and compile under this setting
                first[f"{mode}/{kind}"] = time.perf_counter() - tic
                fns[f"{mode}/{kind}"] = fn
    times = {k: [] for k in fns}
    for _ in range(repeats):  # interleaved, so a change of load hits every variant alike
        for k, fn in fns.items():
            tic = time.perf_counter()
            jax.block_until_ready(fn(v, x, y))
            times[k].append(time.perf_counter() - tic)
    return {**{k: 1000 * float(np.median(t)) / num_steps for k, t in times.items()},
            "first_call_s": first}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["smallgap", "poolgap"])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--num_steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--second_order", action="store_true",
                   help="also time the IG-norm (double backprop) step; see the docstring")
    p.add_argument("--second_order_steps", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = {"settings": {"batch": args.batch, "num_steps": args.num_steps,
                        "repeats": args.repeats, "unit": "ms per step (median)",
                        "second_order_steps": args.second_order_steps if args.second_order
                        else None, "ig_points": IG_POINTS,
                        "backend": jax.default_backend(), "devices": jax.device_count(),
                        "cpu_count": os.cpu_count(), "jax": jax.__version__,
                        "platform": platform.platform(),
                        "command": report.command("experiments.benchmarks.loop_speed", argv)}}
    runs = [(name, False) for name in args.models]
    runs += [(name, True) for name in args.models] if args.second_order else []
    for name, second in runs:
        key = f"{name}/second_order" if second else name
        out[key] = measure(name, batch=args.batch, repeats=args.repeats, second_order=second,
                           num_steps=args.second_order_steps if second else args.num_steps)
        r = out[key]
        print(f"{key}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k in r["first_call_s"])
              + f" ms/step; loop speed-up from the fast path "
                f"{r['standard/loop'] / r['fast/loop']:.2f}x; first call (trace, compile, run) "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["first_call_s"].items()) + " s", flush=True)
    if args.out:
        report.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
