"""Training-step benchmark: examples/s of every jaxadv objective and of a PyTorch PGD-AT loop.

    python -m experiments.benchmarks.training --out results/training_bench.json [--quick]
        [--torch_device cuda]

Model: SmallGAP (Boopathy et al.; 16-32-100 GAP head) on Fashion-MNIST batches of ``--batch``
(128) images; Adam. Every adversarial objective uses the same inner attack budget: l-inf eps 0.1,
``--inner_steps`` (10) steps of 0.025 (2.5 eps / steps), random start. The PyTorch loop is a
standard Madry PGD-AT step (the same inner PGD, then one Adam step on the adversarial batch's
cross-entropy) on a PyTorch twin of SmallGAP with the same initial weights, timed in the same run,
interleaved with jaxadv's PGD-AT step (so load changes on a shared machine hit both alike).

Timing: one warm-up (compile) step each, then ``--repeats`` rounds of ``--steps`` steps; medians.
``mesh_equals_single``: one PGD-AT and one Int2 step on a mesh of all local devices equals the
single-device step (rtol 2e-5 on the parameters; with SGD, see the comment in ``main``). Run
with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (or ``--host_devices 8``) to check
8 CPU devices.

On a GPU machine jaxadv runs on JAX's default backend and ``--torch_device cuda`` puts the PyTorch
loop on the GPU (it then waits for the GPU with ``torch.cuda.synchronize()`` at the end of each
round, as jaxadv's round blocks on its parameters); each framework keeps its own float32 defaults.

JSON: ``examples_per_s`` {objective: value}, ``torch_pgd_at_examples_per_s``,
``pgd_at_speedup_vs_torch``, ``int2_cost_vs_pgd_at`` (time ratio), ``mesh_equals_single``, and the
settings.
"""

import argparse
import os
import platform
import statistics
import sys
import time

from experiments import report


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="")
    p.add_argument("--quick", action="store_true", help="3 steps per round, fewer objectives")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--inner_steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--host_devices", type=int, default=1)
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--torch_device", default="cpu", help="cpu (default) or cuda")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    if args.host_devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                                   f"device_count={args.host_devices}").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxadv import sharding
    from jaxadv.data import load_dataset
    from jaxadv.models import get_model
    from jaxadv.training import create_train_state, get_objective, make_train_step

    eps = 0.1
    inner = {"eps": eps, "step_size": 2.5 * eps / args.inner_steps, "num_steps": args.inner_steps}
    objectives = {
        "normal": {}, "pgd_at": inner, "trades": dict(inner, beta=6.0),
        "fast_at": {"eps": eps}, "input_gradient": {"weight": 1.0}, "int": inner,
        "int2": inner, "int_adv": inner, "int2_adv": inner, "ig_norm": inner,
    }
    if args.quick:
        args.steps, args.repeats = 3, 2
        objectives = {k: objectives[k] for k in ("normal", "pgd_at", "int2", "trades")}

    try:
        src = load_dataset("fashion_mnist", "train")
    except FileNotFoundError as e:
        sys.exit(str(e))
    x_np, y_np = src.get(np.arange(args.batch))
    batch = {"image": jnp.asarray(x_np), "label": jnp.asarray(y_np),
             "mask": jnp.ones(args.batch, bool)}
    model = get_model("smallgap", num_classes=10)
    tx = optax.adam(1e-3)
    state0 = create_train_state(model, tx, jax.random.key(0), (1, 28, 28, 1))
    key = jax.random.key(1)
    # The timed steps run on the data mesh of every device (batch sharded, state replicated), as
    # `jaxadv train` runs them; an unsharded batch would keep them on one device.
    mesh = sharding.data_mesh()
    timed_batch = sharding.shard_batch(jax.device_get(batch), mesh)
    timed_state0 = sharding.replicate(state0, mesh)

    steps = {name: jax.jit(make_train_step(objective=get_objective(name, **kw)))
             for name, kw in objectives.items()}

    def jax_runner(name):
        step = steps[name]
        state = {"s": timed_state0}

        def run():
            s = state["s"]
            for _ in range(args.steps):
                s, _ = step(s, timed_batch, key)
            jax.block_until_ready(s.params)
            state["s"] = s
        return run

    runners = {f"jaxadv/{name}": jax_runner(name) for name in objectives}

    torch_info = {}
    if not args.skip_torch:
        try:
            import torch

            from jaxadv.interop.torch_port import check_logits_agree, nhwc_to_nchw, to_torch
        except ImportError:
            torch = None
        if torch is not None:
            tm = to_torch("smallgap", {"params": state0.params})
            with jax.default_matmul_precision("highest"):
                check_logits_agree(lambda z: model.apply({"params": state0.params}, z), tm, x_np)
            dev = torch.device(args.torch_device)
            tm = tm.to(dev)
            opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
            tx_t = nhwc_to_nchw(x_np).to(dev)
            ty_t = torch.as_tensor(y_np, dtype=torch.long).to(dev)
            ce = torch.nn.CrossEntropyLoss()

            def torch_pgd_at():
                for _ in range(args.steps):
                    tm.eval()
                    delta = torch.empty_like(tx_t).uniform_(-eps, eps)
                    x_adv = (tx_t + delta).clamp(0, 1)
                    for _ in range(inner["num_steps"]):
                        x_adv.requires_grad_(True)
                        loss = ce(tm(x_adv), ty_t)
                        (g,) = torch.autograd.grad(loss, x_adv)
                        x_adv = x_adv.detach() + inner["step_size"] * g.sign()
                        x_adv = torch.min(torch.max(x_adv, tx_t - eps), tx_t + eps).clamp(0, 1)
                    tm.train()
                    opt.zero_grad()
                    ce(tm(x_adv.detach()), ty_t).backward()
                    opt.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            runners["torch/pgd_at"] = torch_pgd_at
            torch_info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "torch_device": str(dev)}

    for fn in runners.values():  # warm-up: compile
        fn()
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    eps_s = {name: args.steps * args.batch / t for name, t in med.items()}

    # One step on a mesh of all devices equals the single-device step. Checked with SGD, whose
    # update is linear in the gradient: Adam's first update, lr * g / (|g| + 1e-8), turns the
    # float32 rounding of near-zero gradient entries (which the batch split changes) into
    # differences of the order of lr (1-2 of conv3's 156,800 entries, 5e-6 to 2e-5).
    check_state0 = create_train_state(model, optax.sgd(0.1), jax.random.key(0), (1, 28, 28, 1))
    mesh_ok = True
    for name in ("pgd_at", "int2"):
        if name not in steps:
            continue
        single, _ = steps[name](check_state0, batch, key)
        multi, _ = steps[name](sharding.replicate(check_state0, mesh),
                               sharding.shard_batch(jax.device_get(batch), mesh), key)
        same = jax.tree.map(lambda a, b: bool(np.allclose(a, b, rtol=2e-5, atol=2e-6)),
                            jax.device_get(single.params), jax.device_get(multi.params))
        mesh_ok &= all(jax.tree.leaves(same))

    out = {
        "examples_per_s": {n.split("/", 1)[1]: v for n, v in eps_s.items() if n.startswith("jaxadv")},
        "torch_pgd_at_examples_per_s": eps_s.get("torch/pgd_at"),
        "pgd_at_speedup_vs_torch": (eps_s["jaxadv/pgd_at"] / eps_s["torch/pgd_at"]
                                    if "torch/pgd_at" in eps_s else None),
        "int2_cost_vs_pgd_at": (med["jaxadv/int2"] / med["jaxadv/pgd_at"]
                                if "jaxadv/int2" in med else None),
        "mesh_equals_single": mesh_ok, "num_devices": int(mesh.devices.size),
        "timed_devices": len(timed_batch["image"].sharding.device_set),
        "settings": {"model": "smallgap", "data": "Fashion-MNIST train batch", "batch": args.batch,
                     "inner": inner, "steps_per_round": args.steps, "repeats": args.repeats,
                     "jax": jax.__version__, "backend": jax.default_backend(),
                     "machine": platform.processor() or platform.machine(),
                     "jax_device": str(jax.devices()[0].device_kind),
                     "cpu_count": os.cpu_count(), **torch_info},
        "seconds_median": med,
    }
    print(f"{'step':<24}{'examples/s':>12}")
    for name, v in sorted(eps_s.items(), key=lambda kv: -kv[1]):
        print(f"{name:<24}{v:>12.0f}")
    for k in ("pgd_at_speedup_vs_torch", "int2_cost_vs_pgd_at", "mesh_equals_single"):
        print(f"{k}: {out[k]}")
    if args.out:
        report.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
