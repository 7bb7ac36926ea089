"""Orbax checkpoints of the explicit train state: the last N for resume, and the best by a metric.

Checkpoints hold arrays only (step, params, batch_stats, opt_state, ema_params); the static parts
(model, optimiser) are rebuilt from the config. Restores go against an abstract target built with
``jax.eval_shape``-style shape/dtype structs (and the target's shardings, if any), so a checkpoint
restores onto any mesh. Saves are atomic (orbax writes to a temporary directory and renames), so a
run killed mid-save keeps its last complete checkpoint.
"""

import os

import jax
import orbax.checkpoint as ocp

from jaxadv.training.state import TrainState


def _abstract(tree):
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def _shapes_by_path(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def _check_params_match(saved_params, target_params) -> None:
    """Raises ValueError where the saved parameters' names or shapes differ from the model's.

    Run before orbax reads any array: a mismatch found inside orbax's reads leaves background
    read coroutines behind."""
    saved, target = _shapes_by_path(saved_params), _shapes_by_path(target_params)
    missing = sorted(set(target) - set(saved))
    extra = sorted(set(saved) - set(target))
    wrong = sorted(k for k in set(saved) & set(target) if saved[k] != target[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing parameters {missing[:3]}")
        if extra:
            parts.append(f"unexpected parameters {extra[:3]}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: saved {saved[k]} vs model {target[k]}" for k in wrong[:3]))
        raise ValueError("; ".join(parts))


class Checkpointer:
    """Keeps the last ``keep`` checkpoints under ``workdir/checkpoints`` and the best one (by
    ``best_metric``, higher is better) under ``workdir/best``."""

    def __init__(self, workdir: str, *, keep: int = 2, best_metric: str | None = "accuracy"):
        self.workdir = os.path.abspath(workdir)
        self.last = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="jaxadv_last")),
            item_handlers=ocp.StandardCheckpointHandler())
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                os.path.join(self.workdir, "best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                    best_mode="max",
                    # Both managers save the same step concurrently: without distinct prefixes
                    # their multi-process barriers share a key and deadlock.
                    multiprocessing_options=ocp.options.MultiprocessingOptions(
                        barrier_sync_key_prefix="jaxadv_best")),
                item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def save(self, state: TrainState, *, metrics: dict | None = None) -> None:
        step = int(jax.device_get(state.step))
        self.last.save(step, args=ocp.args.StandardSave(state.checkpoint_items()))
        self.save_best(state, metrics=metrics)

    def save_best(self, state: TrainState, *, metrics: dict | None) -> None:
        """Offers ``state`` to the best-checkpoint manager (kept if its ``best_metric`` is the
        highest so far); nothing without a best manager or without that metric."""
        if self.best is not None and metrics and self.best_metric in metrics:
            step = int(jax.device_get(state.step))
            self.best.save(step, args=ocp.args.StandardSave(state.checkpoint_items()),
                           metrics={k: float(v) for k, v in metrics.items()})

    def restore(self, state: TrainState, step: int | None = None, *, best: bool = False
                ) -> TrainState:
        """Restores into the structure (and shardings) of ``state``."""
        mngr = self.best if best else self.last
        if mngr is None:
            raise ValueError("No best-checkpoint manager: construct with best_metric.")
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint found in {mngr.directory}.")
        target = state.checkpoint_items()
        try:
            _check_params_match(mngr.item_metadata(step).tree["params"], target["params"])
            items = mngr.restore(step, args=ocp.args.StandardRestore(_abstract(target)))
        except Exception as e:
            raise ValueError(
                f"Checkpoint {mngr.directory}/{step} cannot be restored into this model and "
                f"optimiser ({type(e).__name__}: {str(e)[:300]}). It is corrupt, or was written by "
                "a different config; use a fresh --workdir (the existing files are left as they "
                "are).") from e
        return state.replace_items(items)

    def wait(self) -> None:
        self.last.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.last.close()
        if self.best is not None:
            self.best.close()
