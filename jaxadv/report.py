"""A self-contained HTML page for a training or evaluation run (``jaxadv report WORKDIR``).

The page reads what a run leaves in its directory and needs nothing else to be viewed (figures are
inline PNGs, styles inline, no scripts):

* ``config.json``: the model, data, objective and optimiser (a summary table);
* ``metrics.jsonl``: training curves (every numeric series against the step: loss, accuracy,
  validation or test accuracy, robust accuracy, examples per second);
* ``results.json`` and any other ``*.json`` evaluation record in the directory (tables);
* the latest checkpoint: sample test images, their PGD adversarial examples (l-inf,
  ``eps`` from the run's robust evaluation settings or the argument) and the true-class CAM of
  each, with the predictions; skipped with a note when the data or the checkpoint is missing.

    from jaxadv.report import write_report
    path = write_report("workdirs/fashion_mnist_smallgap")      # -> .../report.html
"""

import base64
import html
import io
import json
import os
from collections.abc import Mapping


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' \
           f"<figcaption>{html.escape(alt)}</figcaption></figure>"


def _table(rows: Mapping, header=("key", "value")) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, Mapping):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
        return str(v)

    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(fmt(v))}</td></tr>"
                   for k, v in rows.items())
    return (f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
            f"{body}</table>")


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``metrics.jsonl`` (empty when there is none; bad lines are skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def training_curves_figure(records: list[dict]):
    """A figure with one panel per group of numeric series (loss, accuracy, throughput)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k, v in r.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)})
    groups = {"loss": [k for k in keys if "loss" in k or "objective" in k],
              "accuracy": [k for k in keys if "accuracy" in k],
              "examples / s": [k for k in keys if "per_second" in k]}
    groups = {g: ks for g, ks in groups.items() if ks}
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.5 * max(1, len(groups)), 3.2),
                             squeeze=False)
    for ax, (name, ks) in zip(axes[0], groups.items(), strict=False):
        for k in ks:
            pts = [(r["step"], r[k]) for r in records if k in r and "step" in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def examples_figure(workdir: str, *, num_examples: int = 6, eps: float | None = None,
                    pgd_steps: int = 20):
    """(figure, caption) of clean and PGD-attacked test images with their true-class CAMs."""
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxadv import plotting
    from jaxadv.analysis import cam_map_fn
    from jaxadv.attacks.gradient import pgd
    from jaxadv.training.loop import load_run_config, load_sources, load_trained_model

    # The checkpoint results.json describes: the best one when the run ends on it.
    best = bool(load_run_config(workdir).get("train", {}).get("final_from_best", False)) and (
        os.path.isdir(os.path.join(workdir, "best")))
    model, variables, config = load_trained_model(workdir, best=best)
    _, test_src = load_sources(config)
    x, y = test_src.get(np.arange(min(num_examples, len(test_src))))
    x, y = jnp.asarray(x), jnp.asarray(y)
    robust = dict(config.get("eval", {}).get("robust_kwargs", {}))
    norm = robust.get("norm", "linf")  # the run's threat model
    if eps is None:
        eps = float(robust.get("eps", 0.1))
    logits_fn = lambda z: model.apply(variables, z)  # noqa: E731
    res = pgd(logits_fn, x, y, jax.random.key(0), eps=eps, step_size=eps / 4,
              num_steps=pgd_steps, random_start=True, norm=norm)
    map_fn = cam_map_fn(model.apply, variables)
    cams, cams_adv = map_fn(x, y), map_fn(res.x_adv, y)
    pred, pred_adv = (np.asarray(jnp.argmax(logits_fn(z), -1)) for z in (x, res.x_adv))
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.7 * n, 5.2), squeeze=False)
    for i in range(n):
        plotting.map_overlay(axes[0, i], x[i], cams[i], title=f"y={int(y[i])} pred={pred[i]}")
        plotting.map_overlay(axes[1, i], res.x_adv[i], cams_adv[i], title=f"adv pred={pred_adv[i]}")
        d = np.asarray(res.x_adv[i] - x[i]).squeeze()
        # l-inf: every pixel within eps; l2 / l1: scaled to the largest pixel change
        scale = eps if norm == "linf" else max(float(np.abs(d).max()), 1e-12)
        axes[2, i].imshow(d if d.ndim == 2 else 0.5 + d / (2 * scale), cmap="coolwarm",
                          vmin=-scale, vmax=scale)
        axes[2, i].set_xticks([])
        axes[2, i].set_yticks([])
        axes[2, i].set_title("perturbation", fontsize="small")
    norm_name = {"linf": "l-inf", "l2": "l2", "l1": "l1"}.get(norm, norm)
    caption = (f"First {n} test images of {config.dataset.name}: true-class CAM on the clean image "
               f"(top), on its PGD example (middle; {norm_name} eps {eps:g}, {pgd_steps} steps of "
               f"eps/4, random start) and the perturbation (bottom); the "
               f"{'best' if best else 'latest'} checkpoint. Robust on these images: "
               f"{int(np.sum(pred_adv == np.asarray(y)))}/{n}.")
    return fig, caption


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;font-size:.9em}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.85em;color:#555}.note{color:#a40}"""


def _run_length(train: dict) -> str:
    """'N steps' where train.num_steps > 0 sets the length, else 'E epochs' (num_steps -1)."""
    steps = train.get("num_steps")
    if isinstance(steps, int) and steps > 0:
        return f"{steps} steps"
    return f"{train.get('num_epochs')} epochs"


def write_report(workdir: str, *, out: str | None = None, num_examples: int = 6,
                 eps: float | None = None, pgd_steps: int = 20) -> str:
    """Renders ``workdir`` into a self-contained HTML page (module docstring).

    Args:
      workdir: a training directory (``config.json``, ``metrics.jsonl``, checkpoints) or a
        directory of evaluation JSON files.
      out: output path (default ``workdir/report.html``).
      num_examples: test images in the adversarial-example figure.
      eps: radius of that figure's PGD, in the norm of the run's robust evaluation (default:
        its eps, or l-inf 0.1); the figure uses the checkpoint results.json describes.
      pgd_steps: its number of steps.

    Returns:
      The path of the page written.

    Raises:
      FileNotFoundError: ``workdir`` does not exist or holds nothing a report can show.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir} is not a directory: pass the --workdir of a "
                                "`jaxadv train` run.")
    from jaxadv import validation

    validation.check_int("num_examples", num_examples, 1)  # images of the examples figure
    import matplotlib

    matplotlib.use("Agg")
    out = out or os.path.join(workdir, "report.html")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    parts = [f"<h1>jaxadv run report: {html.escape(os.path.abspath(workdir))}</h1>"]
    config_path = os.path.join(workdir, "config.json")
    config = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        summary = {
            "model": config.get("model", {}).get("name"),
            "dataset": config.get("dataset", {}).get("name"),
            "objective": config.get("objective", {}).get("name"),
            "optimizer": {k: config.get("optimizer", {}).get(k)
                          for k in ("name", "learning_rate", "schedule")},
            "length x batch": f"{_run_length(config.get('train', {}))} x "
                              f"{config.get('train', {}).get('batch_size')}"}
        parts += ["<h2>Configuration</h2>", _table(summary),
                  "<details><summary>full config.json</summary><pre>"
                  + html.escape(json.dumps(config, indent=1)) + "</pre></details>"]
    records = read_metrics(workdir)
    if records:
        parts += ["<h2>Training curves</h2>",
                  _img(_png(training_curves_figure(records)),
                       f"metrics.jsonl: {len(records)} records up to step "
                       f"{records[-1].get('step')}")]
    evals = sorted(f for f in os.listdir(workdir)
                   if f.endswith(".json") and f != "config.json")
    for name in evals:
        with open(os.path.join(workdir, name)) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError:
                continue
        if isinstance(data, Mapping):
            parts += [f"<h2>Results: {html.escape(name)}</h2>", _table(data)]
    if not (config or records or evals):
        raise FileNotFoundError(f"{workdir} holds no config.json, metrics.jsonl or results JSON "
                                "to report on.")
    if config is not None:
        parts.append("<h2>Adversarial examples and maps</h2>")
        try:
            fig, caption = examples_figure(workdir, num_examples=num_examples, eps=eps,
                                           pgd_steps=pgd_steps)
            parts.append(_img(_png(fig), caption))
        except (FileNotFoundError, ValueError) as e:
            parts.append(f'<p class="note">Not shown: {html.escape(str(e))}</p>')
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>jaxadv report</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(page)
    os.replace(tmp, out)
    return out
