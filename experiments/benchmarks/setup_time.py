"""The README's two set-up commands timed in a fresh clone with a fresh virtual environment.

    python -m experiments.benchmarks.setup_time --out results/setup_time_DATE.json

Clones this repository's committed HEAD into ``--root`` (a new folder; ``shared`` beside it links
to this checkout's ``../shared``, which the tests read), then runs ``make run`` (creates ``.venv``,
installs jaxadv, trains and evaluates the main job) and ``make test`` (adds the test and peer
extras, runs the suite) there, one after the other, and writes their wall times, exit codes,
the suite's pytest summary and the main job's clean accuracies. pip's cache is off
(``PIP_NO_CACHE_DIR=1``, as on a fresh machine; ``--pip_cache`` keeps it), so the packages come from
the registry again. Debian's packages (Fashion-MNIST, chromium) cannot be uninstalled for the
measurement: the JSON records whether they were already there. Run it alone: the suite's time is
the machine's two cores' time.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

from experiments import report

REPO = pathlib.Path(__file__).resolve().parents[2]
DEBIAN_FILES = {"dataset-fashion-mnist": "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
                "chromium": "/usr/bin/chromium"}
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|warnings?)")


def pytest_summary(text: str) -> dict:
    """Counts and seconds of pytest's last summary line in ``text`` ("1386 passed, 2 skipped in
    835.12s (0:13:55)" -> {"passed": 1386, "skipped": 2, "seconds": 835.12}); {} without one."""
    lines = [ln for ln in text.splitlines() if re.search(r" in [\d.]+s\b", ln) and _SUMMARY.search(ln)]
    if not lines:
        return {}
    line = lines[-1]
    out = {k.rstrip("s") if k.startswith(("error", "warning")) else k: int(n)
           for n, k in _SUMMARY.findall(line)}
    out["seconds"] = float(re.search(r" in ([\d.]+)s\b", line).group(1))
    return out


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(cmd: list[str], cwd: pathlib.Path, env: dict, log: pathlib.Path) -> dict:
    """Runs ``cmd`` in ``cwd``, its output to ``log``; wall seconds, exit code, last lines."""
    tic = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    return {"command": " ".join(cmd), "seconds": round(time.perf_counter() - tic, 1),
            "returncode": rc, "tail": text.splitlines()[-5:]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--root", default=None,
                   help="a new folder for the clone (default: a fresh one under /tmp)")
    p.add_argument("--pip_cache", action="store_true", help="let pip use its cache")
    p.add_argument("--skip_test", action="store_true", help="time `make run` only")
    args = p.parse_args(argv)

    root = pathlib.Path(args.root or f"/tmp/jaxadv_setup_time_{os.getpid()}")
    if root.exists():
        raise SystemExit(f"--root {root} exists; name a new folder (the clone must be fresh).")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout)
    root.mkdir(parents=True)
    clone = root / "main"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True)
    if (REPO.parent / "shared").exists():
        (root / "shared").symlink_to(REPO.parent / "shared")
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "XLA_FLAGS", "JAX_PLATFORMS", "PYTHONPATH")}
    if not args.pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    debian = {name: pathlib.Path(f).exists() for name, f in DEBIAN_FILES.items()}

    result = {"settings": {
        "command": report.command("experiments.benchmarks.setup_time", argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit, "uncommitted_changes_left_out": dirty,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
        "pip_cache": args.pip_cache, "debian_packages_already_installed": debian,
        "root": str(root)}}
    result["make_run"] = timed(["make", "run"], clone, env, root / "make_run.log")
    comparison = clone / "workdirs" / "main_job" / "comparison.json"
    if comparison.exists():
        methods = json.loads(comparison.read_text()).get("methods", {})
        result["make_run"]["clean_accuracy"] = {m: r.get("test_accuracy")
                                                for m, r in methods.items()}
    print(f"make run: {result['make_run']['seconds']} s, rc {result['make_run']['returncode']}",
          flush=True)
    if not args.skip_test:
        result["make_test"] = timed(["make", "test"], clone, env, root / "make_test.log")
        result["make_test"]["pytest"] = pytest_summary((root / "make_test.log").read_text(
            errors="replace"))
        print(f"make test: {result['make_test']['seconds']} s, "
              f"{result['make_test']['pytest']}", flush=True)
    report.write_json(args.out, result)
    print(f"wrote {args.out}; logs in {root}", flush=True)
    return result


if __name__ == "__main__":
    main()
