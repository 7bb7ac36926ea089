"""Synthetic Fashion-MNIST-shaped IDX data with a learnable signal, for fast training tests."""

import numpy as np

from jaxadv.data import write_idx


def make_synthetic_idx(directory, *, num_train=512, num_test=128, seed=0):
    """Writes {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz: class c has a bright 7x7 block at a
    class-specific place plus noise, so a small CNN learns it in a few dozen steps."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 4)
            images[i, 7 * r:7 * r + 7, 7 * col:7 * col + 7] = 230
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def train_tiny_fashion_mnist_workdir(tmp_path, monkeypatch, *, num_test=64):
    """A jaxadv training directory (config.json + checkpoint) of a Normal SmallGAP trained for 5
    steps on synthetic Fashion-MNIST files, which ``JAXADV_FASHION_MNIST_DIR`` points at for the
    rest of the test: the input of the reproduction scripts' Fashion-MNIST paths."""
    from experiments.configs import fashion_mnist_robust
    from jaxadv.training import train_and_evaluate

    monkeypatch.setenv("JAXADV_FASHION_MNIST_DIR", str(
        make_synthetic_idx(tmp_path / "data", num_train=256, num_test=num_test)))
    workdir = tmp_path / "normal"
    config = fashion_mnist_robust.get_config("normal,quick")
    config.train.num_steps, config.train.checkpoint_every = 5, 5
    config.eval.num_examples, config.eval.robust_attack = num_test, ""  # no robust evaluation
    train_and_evaluate(config, str(workdir), verbose=False)
    return workdir
