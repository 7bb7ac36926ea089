"""What JAX's persistent compilation cache saves when a training run is resumed.

    python -m experiments.benchmarks.compile_cache --tries 2 --out results/compile_cache_DATE.json

Per try and setting (cache on, cache off), in a new workdir: ``jaxadv train --config
experiments/configs/fashion_mnist_smallgap.py:quick --workdir W --config.train.num_steps=20``, then
the same with ``=40``, which resumes at step 20 and recompiles its programs (the README's "A rerun
compiles its programs again" paragraph). With the cache on, both commands get
``JAX_COMPILATION_CACHE_DIR`` (a new folder per try) and
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``. The JSON holds the second command's wall seconds
per try and setting (the first command fills the cache), and the cache's entries and bytes. The
settings alternate within each try so that a slow spell of the machine hits both.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from experiments import report

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/fashion_mnist_smallgap.py:quick"


def _train(workdir: pathlib.Path, steps: int, env: dict) -> float:
    cmd = [sys.executable, "-m", "experiments.main", "train", f"--config={CONFIG}",
           f"--workdir={workdir}", f"--config.train.num_steps={steps}"]
    tic = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - tic


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tries", type=int, default=2)
    args = p.parse_args(argv)
    if args.tries < 1:
        raise SystemExit(f"--tries {args.tries}: give at least 1.")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    seconds = {"cache": [], "no_cache": []}
    first = {"cache": [], "no_cache": []}
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(args.tries):
            order = ("cache", "no_cache") if t % 2 == 0 else ("no_cache", "cache")
            for setting in order:
                env = dict(base)
                cache = pathlib.Path(tmp, f"cache{t}")
                if setting == "cache":
                    env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
                wd = pathlib.Path(tmp, f"{setting}{t}")
                first[setting].append(round(_train(wd, 20, env), 2))
                seconds[setting].append(round(_train(wd, 40, env), 2))
                if setting == "cache":
                    files = [f for f in cache.rglob("*") if f.is_file()]
                    entries.append({"entries": len(files),
                                    "bytes": sum(f.stat().st_size for f in files)})
                print(f"try {t} {setting}: {first[setting][-1]} s then {seconds[setting][-1]} s",
                      flush=True)
    result = {"settings": {"command": report.command("experiments.benchmarks.compile_cache", argv),
                           "config": CONFIG, "steps": [20, 40], "tries": args.tries,
                           "cpu_count": os.cpu_count()},
              "resumed_run_seconds": seconds, "first_run_seconds": first, "cache": entries}
    report.write_json(args.out, result)
    print(f"wrote {args.out}", flush=True)
    return result


if __name__ == "__main__":
    main()
