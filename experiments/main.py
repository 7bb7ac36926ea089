"""The jaxadv command line: the only place that parses flags.

  jaxadv train --config experiments/configs/fashion_mnist_smallgap.py --workdir DIR \
      [--config.train.num_epochs=2 ...]
  jaxadv eval  --config CONFIG --workdir DIR [--best]          # a checkpoint of a training run
  jaxadv eval  --checkpoint ../shared/data/boopathy-mnist/mnist_smallgap_normal_100.pkl \
      --dataset mnist_idx --data_dir ../shared/data/mnist-test  # an official checkpoint
  jaxadv report WORKDIR [--out FILE.html] [--eps 0.1]          # an HTML page of a run

(``python -m experiments.main ...`` is the same command.) On CPU the batch is split over
``--host_devices`` XLA host devices, set before JAX initialises; without the flag, one per core,
except for models measured faster on one device (``jaxadv.devices.default_host_device_count``:
PreAct ResNet-18).
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.script_errors import INPUT_ERRORS, report_input_error, wants_traceback

COMMANDS = ("train", "eval", "report")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file "
                                          "(optionally with ':quick').", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "eval: an official Boopathy et al. .pkl "
                                  "checkpoint instead of a workdir.")
_DATASET = flags.DEFINE_string("dataset", "mnist_idx", "eval --checkpoint: dataset name (with "
                               "--config the dataset is the config's dataset.name).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data directory: eval --checkpoint's dataset, "
                                "or with --config the same as --config.dataset.data_dir=DIR.")
_SPLIT = flags.DEFINE_string("split", "test", "eval: split to evaluate.")
_BEST = flags.DEFINE_bool("best", False, "eval: use the best checkpoint instead of the last.")
_OUT = flags.DEFINE_string("out", None, "report: output HTML file (default WORKDIR/report.html).")
_EPS = flags.DEFINE_float("eps", None, "report: l-inf eps of the sample adversarial examples "
                          "(default: the run's robust-evaluation eps, else 0.1).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 6, "report: sample images shown.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the Python traceback of an error in the "
                               "input (a missing file, a bad value) instead of its message alone.")
_HOST_DEVICES = flags.DEFINE_integer(
    "host_devices", 0, "CPU only: split batches over this many XLA host devices (0 = one per core,"
    " 1 = off). Must be set before JAX initialises, which this entry point does. Not given: one "
    "per core, or 1 for models measured faster on one device (preact_resnet18).")


def _usage() -> str:
    return ("usage: jaxadv {train,eval,report} [flags]\n  jaxadv train --config CONFIG --workdir DIR\n"
            "  jaxadv eval (--config CONFIG --workdir DIR | --checkpoint FILE.pkl)\n"
            "  jaxadv report WORKDIR [--out FILE.html]\n"
            "  jaxadv <command> --helpfull for every flag")


def host_device_flag(command: str, config, value: int, given: bool) -> int:
    """The ``--host_devices`` value to use: ``value`` where the user gave the flag, else the
    model-aware default for a ``train`` / ``eval`` run of ``config``
    (:func:`jaxadv.devices.default_host_device_count`; 0, one per core, where it has none)."""
    from jaxadv.devices import default_host_device_count

    if given or command not in ("train", "eval") or config is None:
        return value
    return default_host_device_count(config.get("model", {}).get("name")) or 0


def _set_host_devices(n: int) -> None:
    """--host_devices, unless XLA_FLAGS already chooses a count (an explicit environment wins)."""
    from jaxadv.devices import use_host_devices_unless_set

    if n != 1:
        use_host_devices_unless_set(n or None)


def _apply_data_flags() -> None:
    """With --config: --data_dir sets the config's dataset.data_dir; --dataset is an error (the
    config names its dataset), so neither flag is silently ignored."""
    if _CONFIG.value is None or _CHECKPOINT.value:
        return
    if flags.FLAGS["dataset"].present:
        raise app.UsageError(f"--dataset is for eval --checkpoint; with --config the dataset is "
                             f"the config's ({_CONFIG.value.dataset.name!r}): use "
                             "--config.dataset.name=NAME.")
    if _DATA_DIR.value is not None:
        with _CONFIG.value.unlocked():
            _CONFIG.value.dataset.data_dir = _DATA_DIR.value


def _train() -> None:
    from jaxadv.training import train_and_evaluate

    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("train needs --config and --workdir.")
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(f"Test accuracy: {result['test_accuracy']:.4f} on {result['num_test_examples']} "
          f"examples ({_CONFIG.value.dataset.name}, {_CONFIG.value.model.name}); "
          f"{result['examples_per_second']:.0f} training examples/s on "
          f"{result['num_devices']} device(s); step compile {result['compile_seconds']:.1f} s.")
    print(json.dumps(result))


def _eval() -> None:
    import numpy as np

    from jaxadv import data as data_lib
    from jaxadv import sharding
    from jaxadv.models import get_model, load_official_checkpoint
    from jaxadv.training import create_train_state, evaluate, restore_for_eval

    if _CHECKPOINT.value:
        import optax

        name, params = load_official_checkpoint(_CHECKPOINT.value)
        source = data_lib.load_dataset(_DATASET.value, _SPLIT.value, data_dir=_DATA_DIR.value)
        model = get_model(name)
        shape = (1,) + tuple(source.get(np.arange(1))[0].shape[1:])
        import jax

        state = create_train_state(model, optax.identity(), jax.random.key(0), shape)
        state = state.replace(params=jax.tree.map(jax.numpy.asarray, params))
        label = os.path.basename(_CHECKPOINT.value)
    else:
        if _CONFIG.value is None or _WORKDIR.value is None:
            raise app.UsageError("eval needs --checkpoint FILE, or --config and --workdir.")
        state, _ = restore_for_eval(_CONFIG.value, _WORKDIR.value, best=_BEST.value)
        from jaxadv.training.loop import load_sources

        train_src, val_src, test_src = load_sources(_CONFIG.value, with_validation=True)
        splits = {"train": train_src, "test": test_src, "validation": val_src}
        if _SPLIT.value not in splits:
            raise app.UsageError(f"unknown --split {_SPLIT.value!r}; choose train, test or "
                                 "validation.")
        source = splits[_SPLIT.value]
        if source is None:
            raise app.UsageError("--split validation: this config holds out no validation "
                                 "examples (dataset.validation_examples).")
        label = _WORKDIR.value
    mesh = sharding.data_mesh()
    state = sharding.replicate(state, mesh)
    result = evaluate(state, source, batch_size=1000, mesh=mesh)
    print(f"{label}: accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} on "
          f"{len(source)} examples of {getattr(source, 'name', _DATASET.value)}.")
    print(json.dumps({"checkpoint": label, "num_examples": len(source), **result}))


def _report(workdir: str | None) -> None:
    from jaxadv.report import write_report

    workdir = workdir or _WORKDIR.value
    if not workdir:
        raise app.UsageError("report needs a run directory: jaxadv report WORKDIR.")
    path = write_report(workdir, out=_OUT.value, eps=_EPS.value, num_examples=_NUM_EXAMPLES.value)
    print(f"Report written to {path}")


def main(argv) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(_usage())
    try:
        _dispatch(argv)
    except INPUT_ERRORS as error:  # printed alone (experiments.script_errors)
        if _TRACEBACK.value or wants_traceback():
            raise
        report_input_error(f"jaxadv {argv[1]}", error)


def _dispatch(argv) -> None:
    if argv[1] == "report" and len(argv) <= 3:
        _set_host_devices(1)
        logging.set_verbosity(logging.WARNING)
        _report(argv[2] if len(argv) == 3 else None)
        return
    if len(argv) > 2:
        raise app.UsageError(f"Unexpected arguments {argv[2:]}.\n{_usage()}")
    _apply_data_flags()
    _set_host_devices(host_device_flag(argv[1], _CONFIG.value, _HOST_DEVICES.value,
                                       flags.FLAGS["host_devices"].present))
    if logging.get_verbosity() <= logging.INFO and not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    {"train": _train, "eval": _eval}[argv[1]]()


def run() -> None:
    """Console-script entry point (``jaxadv``)."""
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
