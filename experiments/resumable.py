"""Results files that grow one model at a time, for the long reproduction scripts.

Each finished model is written at once (atomically), and a later run into the same directory with
the same settings skips the models already there: an interrupted run resumes, and a sweep over
checkpoints can be split into one invocation per checkpoint on a small machine. A file with other
settings is never overwritten silently.
"""

import json
import pathlib

import numpy as np

from experiments import report


def finite_or_none(obj):
    """NaN and infinities -> None, recursively (JSON has no NaN); tuples become lists."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    return obj


def save_results(results: dict, out_dir: pathlib.Path) -> dict:
    """Writes ``out_dir``/results.json atomically (non-finite numbers as null); returns what was
    written."""
    results = finite_or_none(results)
    report.write_json(out_dir / "results.json", results, allow_nan=False)
    return results


def differing(old: dict, new: dict, keys=None) -> list[str]:
    """The keys whose values differ (all keys, sorted; or those of ``keys`` present in both, in
    their order): the settings that make a results file another protocol than the run about to
    extend it."""
    if keys is None:
        return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return [k for k in keys if k in old and k in new and old[k] != new[k]]


def earlier_models(path: pathlib.Path, settings: dict, *, fresh: bool,
                   ignore: tuple[str, ...] = ("command", "seconds")) -> dict:
    """``{model: record}`` of an earlier run saved at ``path`` with the same ``settings`` (keys in
    ``ignore`` aside), or {} where there is none or ``fresh``.

    Raises:
      SystemExit: ``path`` holds another script's file, or results with other settings (the
        message names the differing keys and the two ways out).
    """
    if fresh or not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
        old = {k: v for k, v in earlier["settings"].items() if k not in ignore}
    except (ValueError, KeyError, AttributeError) as e:
        raise SystemExit(f"{path} is not a results file of this script ({e!r}); move it away or "
                         "pass --fresh to overwrite it.") from None
    new = finite_or_none({k: v for k, v in settings.items() if k not in ignore})
    diff = differing(old, new)
    if diff:
        raise SystemExit(f"{path} holds results with other settings (differing: "
                         f"{', '.join(diff)}); use another --out_dir, or --fresh to replace them.")
    return earlier.get("models", {})


def check_redo(redo, models) -> None:
    """Raises SystemExit naming the fix when ``redo`` (model names to analyse again) names a model
    this run does not load: its saved record would otherwise stay as it is without a word."""
    unknown = [m for m in redo if m not in models]
    if unknown:
        raise SystemExit(f"--redo {' '.join(unknown)}: not among this run's models "
                         f"({', '.join(models) or 'none'}); name one of those, or add the model "
                         "to the run.")


def already_saved(results: dict, model: str, out_dir: pathlib.Path, *, redo=()) -> bool:
    """Whether ``model`` is among the saved models of ``results`` (says so when it is) and not
    named in ``redo``. A model in ``redo`` keeps its saved record until the new one replaces it,
    so an interrupted rerun loses nothing."""
    if model in redo:
        if model in results["models"]:
            print(f"{model}: in {out_dir / 'results.json'}; analysed again (--redo), the saved "
                  "record is replaced when the new one is done", flush=True)
        return False
    if model in results["models"]:
        print(f"{model}: already in {out_dir / 'results.json'} (same settings); skipped",
              flush=True)
        return True
    return False


def commands(results: dict) -> str:
    """The command(s) that produced the models, in order (several where a run was resumed)."""
    cmds = dict.fromkeys(m.get("command", results["settings"]["command"])
                         for m in results["models"].values()) or [results["settings"]["command"]]
    return " then ".join(f"`{c}`" for c in cmds)
