"""One process of the two-process training check (run by tests/training/test_multiprocess.py).

    python -m tests.training.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR OUT

Each process has 2 CPU devices; the processes join through ``jax.distributed.initialize`` (CPU
collectives over gloo), load their own half of every global batch and train the same config; the
first process writes the final parameters to OUT (.npz). With NUM_PROCESSES = 1 the same script is
the single-process reference.
"""

import os
import sys


def main(argv):
    pid, nproc, port, data_dir, workdir, out = argv
    pid, nproc = int(pid), int(nproc)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAXADV_FASHION_MNIST_DIR"] = data_dir
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if nproc > 1:
        jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid)
    import numpy as np

    from experiments.configs import fashion_mnist_smallgap
    from jaxadv.training import train_and_evaluate
    from jaxadv.training.loop import restore_for_eval

    cfg = fashion_mnist_smallgap.get_config("quick")
    cfg.train.num_steps = 6
    cfg.train.batch_size = 32
    cfg.train.log_every = 3
    cfg.train.checkpoint_every = 3
    cfg.optimizer.schedule = "constant"
    cfg.eval.batch_size = 64
    cfg.eval.num_examples = -1
    result = train_and_evaluate(cfg, workdir, verbose=False)
    state, _ = restore_for_eval(cfg, workdir)
    params = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    if pid == 0:
        np.savez(out, test_accuracy=result["test_accuracy"],
                 **{jax.tree_util.keystr(k): np.asarray(v) for k, v in params})
    if nproc > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
