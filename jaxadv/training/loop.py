"""``train_and_evaluate(config, workdir)``: the training loop with logging, evaluation and resume.

Re-running the same command on the same workdir continues from the last checkpoint and ends with
exactly the parameters of a run that was never interrupted: per-step keys are
``fold_in(key, step)``, the data order is a function of (key, step), and the state is restored whole.
"""

import json
import os
import time
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxadv import data as data_lib
from jaxadv import sharding
from jaxadv.models import get_model
from jaxadv.training.checkpointing import Checkpointer
from jaxadv.training.objectives import get_objective
from jaxadv.training.schedules import make_optimizer
from jaxadv.training.state import TrainState, create_train_state
from jaxadv.training.steps import (
    accumulating,
    add_metrics,
    make_eval_step,
    make_robust_eval_step,
    make_train_step,
    summarize,
    zero_metrics,
)


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN or infinite metrics; the last good checkpoint is kept."""


def _kwargs(cfg) -> dict:
    if cfg is None:
        return {}
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def load_sources(config, *, with_validation: bool = False):
    """(train source, test source) from ``config.dataset``; with ``with_validation``, (train,
    validation, test), where the validation source is the last ``dataset.validation_examples``
    training examples, held out of training (None when that is 0)."""
    ds = config.dataset
    data_dir = ds.get("data_dir") or None
    train = data_lib.load_dataset(ds.name, ds.get("train_split", "train"), data_dir=data_dir)
    test = data_lib.load_dataset(ds.name, ds.get("test_split", "test"), data_dir=data_dir)
    held = int(ds.get("validation_examples", 0))
    val = None
    if held:
        if not 0 < held < len(train):
            raise ValueError(f"dataset.validation_examples must lie in (0, {len(train)}); got "
                             f"{held}.")
        val = data_lib.Subset(train, len(train) - held, len(train))
        train = data_lib.Subset(train, 0, len(train) - held)
    return (train, val, test) if with_validation else (train, test)


def build_model(config):
    return get_model(config.model.name, **_kwargs(config.model.get("kwargs")))


def total_train_steps(config, num_train_examples: int) -> int:
    t = config.train
    if t.get("num_steps", -1) and t.get("num_steps", -1) > 0:
        return int(t.num_steps)
    spe = data_lib.steps_per_epoch(num_train_examples, t.batch_size)
    return int(round(t.num_epochs * spe))


class JsonLogger:
    """Appends one JSON object per line to ``workdir/metrics.jsonl``."""

    def __init__(self, workdir: str, *, start_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        # drop lines from beyond the checkpoint we resume from (one writer on multi-process runs),
        # and any line a killed run left half-written (it would block every resume)
        if os.path.exists(self.path) and jax.process_index() == 0:
            kept, torn = [], 0
            with open(self.path) as f:
                for ln in f:
                    if not ln.strip():
                        continue
                    try:
                        record = json.loads(ln)
                    except json.JSONDecodeError:
                        torn += 1
                        continue
                    if record.get("step", 0) <= start_step:
                        kept.append(ln if ln.endswith("\n") else ln + "\n")
            if torn:
                warnings.warn(f"{self.path}: dropped {torn} unreadable line(s), e.g. one a killed "
                              f"run left half-written.", stacklevel=2)
            with open(self.path, "w") as f:
                f.writelines(kept)

    def write(self, record: dict) -> None:
        if jax.process_index() != 0:  # one writer on multi-process runs
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _eval_batch_size(batch_size: int, source, num_examples: int | None, mesh) -> int:
    """``batch_size`` rounded up to a multiple of the device count, and no larger than the
    examples evaluated (rounded likewise): 128 test images are not padded to a batch of 1,000."""
    n = len(source) if num_examples is None else min(num_examples, len(source))
    d = mesh.devices.size
    return -(-max(1, min(batch_size, n)) // d) * d


def evaluate(state: TrainState, source, *, batch_size: int, mesh=None, eval_step=None,
             num_examples: int | None = None, use_ema: bool = False) -> dict[str, float]:
    """Clean loss and accuracy over ``source`` (padded, masked batches; no example dropped)."""
    mesh = mesh or sharding.data_mesh()
    batch_size = _eval_batch_size(batch_size, source, num_examples, mesh)
    if eval_step is None:
        eval_step = jax.jit(make_eval_step(use_ema=use_ema))
    acc = None
    for batch in data_lib.eval_batches(source, batch_size=batch_size, num_examples=num_examples):
        acc = add_metrics(acc, eval_step(state, sharding.shard_batch(batch, mesh)))
        sharding.wait_between_steps(acc, mesh)
    return summarize(acc)


def robust_evaluate(state: TrainState, source, *, robust_step, batch_size: int, key,
                    mesh=None, num_examples: int | None = None) -> dict[str, float]:
    """Robust accuracy over ``source`` with a jitted step of
    :func:`jaxadv.training.steps.make_robust_eval_step`."""
    mesh = mesh or sharding.data_mesh()
    batch_size = _eval_batch_size(batch_size, source, num_examples, mesh)
    acc = None
    for i, batch in enumerate(data_lib.eval_batches(source, batch_size=batch_size,
                                                    num_examples=num_examples)):
        acc = add_metrics(acc, robust_step(state, sharding.shard_batch(batch, mesh),
                                           jax.random.fold_in(key, i)))
        sharding.wait_between_steps(acc, mesh)
    return summarize(acc)


def _check_finite(summary: dict, step: int, workdir: str, last_good: int | None) -> None:
    bad = {k: v for k, v in summary.items() if not np.isfinite(v)}
    if bad:
        where = (f"the last good checkpoint (step {last_good}) is kept in {workdir}/checkpoints"
                 if last_good is not None else "no checkpoint had been written yet")
        raise NonFiniteLossError(
            f"Non-finite metrics at step {step}: {bad}; {where}. Lower the learning rate "
            "(--config.optimizer.learning_rate), add gradient clipping "
            "(--config.optimizer.grad_clip_norm=1.0) or check the inputs, then rerun.")


def _previous_timings(workdir: str) -> dict:
    """The timing fields of ``workdir``'s existing results.json (empty if none): a rerun of a
    finished run trains nothing and must not overwrite them with zeros."""
    path = os.path.join(workdir, "results.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}
    keys = ("train_seconds", "examples_per_second", "compile_seconds")
    return {k: old[k] for k in keys if k in old}


def _check_num_classes(state, sample_shape, sources) -> None:
    """The model must have an output for every class of the data: inside the jitted step the
    labels are not checked, and a label >= K gets an all-zero one-hot target (no loss at all).
    Shapes only (``jax.eval_shape`` of the state's model on its variables): nothing runs."""
    out = jax.eval_shape(lambda v: state.apply_fn(v, jnp.zeros(sample_shape, jnp.float32)),
                         state.eval_variables())
    k = out.shape[-1]
    for src in sources:
        need = getattr(src, "num_classes", None)
        if need is not None and need > k:
            raise ValueError(f"The data has {need} classes but the model has {k} outputs; set "
                             f"model.kwargs.num_classes={need} (--config.model.kwargs."
                             f"num_classes={need}).")


def train_and_evaluate(config: Mapping, workdir: str, *, verbose: bool = True) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints) and evaluates it.

    Returns the final summary: ``{"step", "test_accuracy", "test_loss", "train_seconds",
    "examples_per_second", "compile_seconds"}`` (also written to ``workdir/results.json``).
    """
    if config.get("eval", {}).get("num_examples", -1) == 0:  # before anything is written
        raise ValueError("eval.num_examples must be -1 (the whole test set) or >= 1; got 0.")
    t = config.train
    mesh = sharding.data_mesh()
    sharding.check_divisible(t.batch_size, mesh, "training batch size")
    train_src, val_src, test_src = load_sources(config, with_validation=True)
    os.makedirs(workdir, exist_ok=True)  # after the checks: a failed start leaves no directory
    model = build_model(config)
    total_steps = total_train_steps(config, len(train_src))
    tx = make_optimizer(config.optimizer, total_steps=total_steps)
    key = jax.random.key(config.seed)
    init_key, train_key, data_key = jax.random.split(key, 3)
    sample_shape = (1,) + tuple(train_src.get(np.arange(1))[0].shape[1:])
    ema_decay = float(t.get("ema_decay", 0.0)) or None
    state = create_train_state(model, tx, init_key, sample_shape, ema=ema_decay is not None)
    _check_num_classes(state, sample_shape, (train_src, test_src))
    state = sharding.replicate(state, mesh)

    best_metric = t.get("best_metric", "accuracy")
    ckpt = Checkpointer(workdir, keep=int(t.get("keep_checkpoints", 2)), best_metric=best_metric)
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(state, start)
        if verbose:
            print(f"Resuming from the checkpoint at step {start} in {workdir}.")
    start = int(jax.device_get(state.step))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2) if hasattr(config, "to_json")
                    else json.dumps(config))
    logger = JsonLogger(workdir, start_step=start)

    objective = get_objective(config.objective.name, **_kwargs(config.objective.get("kwargs")))
    plain_step = make_train_step(objective=objective, ema_decay=ema_decay)
    train_step = jax.jit(accumulating(plain_step), donate_argnums=(0, 1))
    eval_step = jax.jit(make_eval_step(use_ema=bool(t.get("eval_ema", False))))
    batches = data_lib.train_batches(train_src, batch_size=t.batch_size, key=data_key,
                                     start_step=start)
    log_every = int(t.get("log_every", 100))
    ckpt_every = int(t.get("checkpoint_every", 500))
    eval_every = int(t.get("eval_every", 0))
    num_eval = config.get("eval", {}).get("num_examples", -1)
    num_eval = None if num_eval is None or num_eval < 0 else int(num_eval)
    eval_bs = int(config.get("eval", {}).get("batch_size", 1000))
    ev_cfg = config.get("eval", {})
    robust_step = None
    if ev_cfg.get("robust_attack"):
        robust_step = jax.jit(make_robust_eval_step(
            attack=ev_cfg.robust_attack, attack_kwargs=_kwargs(ev_cfg.get("robust_kwargs")),
            use_ema=bool(t.get("eval_ema", False))))
    elif best_metric == "robust_accuracy":
        raise ValueError("train.best_metric='robust_accuracy' needs eval.robust_attack (e.g. "
                         "'pgd') and eval.robust_kwargs (eps, step_size, num_steps).")
    num_robust = int(ev_cfg.get("robust_examples", 1000))
    robust_key = jax.random.fold_in(key, 7)
    # Periodic evaluations (and the best checkpoint) use the held-out validation examples when
    # there are any (fast AT's guard against catastrophic overfitting), else the test set.
    select_src, select_name = (val_src, "val") if val_src is not None else (test_src, "test")

    def run_evals(src, prefix, n_clean):
        out = {f"{prefix}_{k}": v for k, v in evaluate(
            state, src, batch_size=eval_bs, mesh=mesh, eval_step=eval_step,
            num_examples=n_clean).items()}
        if robust_step is not None:
            out.update({f"{prefix}_{k}": v for k, v in robust_evaluate(
                state, src, robust_step=robust_step, batch_size=eval_bs, key=robust_key,
                mesh=mesh, num_examples=min(num_robust, len(src))).items()})
        return out

    last_good, compile_s = (start or None), 0.0
    acc = zeros = None  # running (sum, count) pairs on device, zeroed after each log step
    last_evals = None  # (step, split name, metrics) of the latest periodic evaluation
    examples, t_train = 0, 0.0
    bar = tqdm(total=total_steps, initial=start, disable=not verbose, unit="step",
               dynamic_ncols=True)
    tic = time.perf_counter()
    try:
        for step in range(start, total_steps):
            batch = sharding.shard_batch(next(batches), mesh)
            if acc is None:
                if zeros is None:
                    zeros = zero_metrics(plain_step, state, batch, train_key)
                acc = sharding.replicate(zeros, mesh)
            if step == start:
                t0 = time.perf_counter()
                state, acc = train_step(state, acc, batch, train_key)
                jax.block_until_ready(state.step)
                compile_s = time.perf_counter() - t0
                tic = time.perf_counter()
            else:
                # Several CPU devices: the previous step finishes first (XLA:CPU deadlocks with
                # several in flight; sharding.waits_between_steps). The batch above was prepared
                # while it ran.
                sharding.wait_between_steps((state, acc), mesh)
                state, acc = train_step(state, acc, batch, train_key)
                examples += t.batch_size
            done = step + 1
            is_log = done % log_every == 0 or done == total_steps
            is_ckpt = done % ckpt_every == 0 or done == total_steps
            is_eval = (eval_every and done % eval_every == 0) or done == total_steps
            if is_log or is_ckpt or is_eval:
                summary = summarize(acc)
                _check_finite(summary, done, workdir, last_good)
                elapsed = time.perf_counter() - tic
                record = {"step": done, "split": "train", **summary,
                          "examples_per_second": examples / max(elapsed, 1e-9)}
                if is_eval:
                    evals = run_evals(select_src, select_name,
                                      num_eval if select_name == "test" else None)
                    record.update(evals)
                    last_evals = (done, select_name, evals)
                logger.write(record)
                bar.set_postfix(loss=f"{summary.get('loss', summary['objective']):.4f}",
                                ex_s=f"{record['examples_per_second']:.0f}")
                acc = None
                sel = {k[len(select_name) + 1:]: v for k, v in record.items()
                       if k.startswith(select_name + "_")} if is_eval else None
                if is_ckpt:
                    ckpt.save(state, metrics=sel)
                    last_good = done
                elif is_eval:  # every evaluation is a candidate for the best checkpoint
                    ckpt.save_best(state, metrics=sel)
            bar.update(1)
    except BaseException:
        # Finish the checkpoint saves in flight before the error (non-finite metrics, Ctrl-C)
        # leaves: the last good checkpoint its message names must be on disk.
        ckpt.wait()
        ckpt.close()
        raise
    bar.close()
    t_train = time.perf_counter() - tic
    ckpt.wait()
    final_step = int(jax.device_get(state.step))  # total_steps, or more for a run resumed past it
    if t.get("final_from_best", False) and best_metric and ckpt.best.latest_step() is not None:
        # Early stopping on the validation metric (Wong et al. 2020's guard for fast AT).
        final_step = ckpt.best.latest_step()
        state = ckpt.restore(state, final_step, best=True)
    ckpt.close()
    if last_evals is not None and last_evals[:2] == (final_step, "test"):
        final = last_evals[2]  # the state evaluated at the last step is the final one
    else:
        final = run_evals(test_src, "test", num_eval)
    result = {"step": final_step, **final,
              "num_test_examples": min(num_eval or len(test_src), len(test_src)),
              "train_seconds": t_train,
              "examples_per_second": examples / max(t_train, 1e-9), "compile_seconds": compile_s,
              "num_devices": int(mesh.devices.size)}
    if robust_step is not None:
        result["num_robust_examples"] = min(num_robust, len(test_src))
    if start >= total_steps:  # nothing trained in this call: keep the run's own timings
        result.update(_previous_timings(workdir))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(result, f, indent=2)
    return result


def restore_for_eval(config, workdir: str, *, best: bool = False) -> tuple[TrainState, object]:
    """The (state, model) of the latest (or best) checkpoint in ``workdir``."""
    sub = os.path.join(workdir, "best" if best else "checkpoints")
    if not os.path.isdir(sub):  # before the Checkpointer, which would create it
        raise FileNotFoundError(f"{sub} does not exist: {workdir!r} holds no {'best ' if best else ''}"
                                f"checkpoint of a jaxadv training run. Check --workdir.")
    model = build_model(config)
    train_src, _ = load_sources(config)
    sample_shape = (1,) + tuple(train_src.get(np.arange(1))[0].shape[1:])
    tx = make_optimizer(config.optimizer, total_steps=total_train_steps(config, len(train_src)))
    ema = bool(config.train.get("ema_decay", 0.0))
    state = create_train_state(model, tx, jax.random.key(0), sample_shape, ema=ema)
    ckpt = Checkpointer(workdir, keep=int(config.train.get("keep_checkpoints", 2)))
    state = ckpt.restore(state, best=best)
    ckpt.close()
    return state, model




def load_run_config(workdir: str):
    """The ``config.json`` that training wrote in ``workdir``, as a ConfigDict.

    Raises:
      FileNotFoundError: no ``config.json`` (not a jaxadv training directory).
    """
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a jaxadv training directory "
                                "(train one with `python -m experiments.main --workdir DIR`).")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_trained_model(workdir: str, *, best: bool = False, use_ema: bool = False):
    """(model, eval variables, config) of a finished or interrupted run, from its ``workdir``
    alone (the ``config.json`` that training writes and the latest or best checkpoint).

    Raises:
      FileNotFoundError: no ``config.json`` (not a jaxadv training directory) or no checkpoint.
    """
    config = load_run_config(workdir)
    state, model = restore_for_eval(config, workdir, best=best)
    return model, state.eval_variables(use_ema=use_ema), config
