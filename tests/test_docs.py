"""The README and docs/performance.md stay reproducible: every ``python -m experiments...`` command
they give parses with its script's own argument parser, and every file under ``results/`` they
name is committed.

A command is a backticked ``python -m experiments.<module> ...`` span (it may run over several
lines). The placeholders the text uses for a count (``N``, ``K``) are read as 2; ``...`` is
dropped. The script's ``main(argv)`` is called with ``argparse.ArgumentParser.parse_args``
replaced by one that stops right after parsing, so nothing runs.
"""

import argparse
import glob
import importlib
import math
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/performance.md"]
COMMAND = re.compile(r"`python\s+-m\s+(experiments(?:\.\w+)+)([^`]*)`")
RESULT = re.compile(r"results/[A-Za-z0-9_.*/{},-]+")
# Named in the text but not meant to exist: a run's output that was renamed once complete
# (README, "Official Boopathy et al. checkpoints").
NOT_FILES = {"results/boopathy_mnist_n1000.json"}


class _Parsed(Exception):
    pass


@pytest.fixture
def parses(monkeypatch):
    """``parses(module, args)``: whether ``python -m module *args`` gets past its argument parser
    (``ArgumentParser.parse_args`` stops right after parsing, so nothing else runs)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)

    def check(module: str, args: list[str]) -> bool:
        try:
            importlib.import_module(module).main(args)
        except _Parsed:
            return True
        except SystemExit:
            return False
        raise AssertionError(f"python -m {module}: main returned without parsing its arguments")

    return check


def _commands(text: str) -> list[tuple[str, list[str]]]:
    out = []
    for m in COMMAND.finditer(text):
        args = shlex.split(" ".join(m.group(2).split()).replace("...", ""))
        out.append((m.group(1), ["2" if a in ("N", "K") else a for a in args]))
    return out


def _result_paths(text: str) -> list[str]:
    """Every results/ path in ``text``, with ``{a,b}`` alternatives expanded; a path broken
    over two lines (``results/name.`` then ``{json,md}``) is read up to its break."""
    out = []
    for raw in RESULT.findall(text):
        raw = raw.rstrip(".,")
        alt = re.search(r"\{([^}]*)\}", raw)
        out += ([raw[:alt.start()] + a + raw[alt.end():] for a in alt.group(1).split(",")]
                if alt else [raw])
    return out


def _exists(path: str) -> bool:
    """A file or folder, where ``*`` and the placeholders for a device count (``Ndev``) and a
    model (``_M_``) match anything, and a path cut at a line break (no extension) matches the
    files it starts."""
    pattern = str(ROOT / path.replace("Ndev", "*dev").replace("_M_", "_*_"))
    if glob.glob(pattern):
        return True
    return "." not in Path(path).name and bool(glob.glob(pattern + ".*"))


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_parses(doc, parses):
    commands = _commands((ROOT / doc).read_text())
    assert commands, f"no commands found in {doc}"
    failures = [f"python -m {module} {shlex.join(args)}" for module, args in commands
                if not parses(module, args)]
    assert not failures, f"{doc}: commands its scripts reject:\n" + "\n".join(failures)


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_result_is_committed(doc):
    paths = _result_paths((ROOT / doc).read_text())
    assert paths, f"no results/ paths found in {doc}"
    missing = sorted({p for p in paths if p not in NOT_FILES and not _exists(p)})
    assert not missing, f"{doc} names results that are not in the repository: {missing}"


def test_a_stale_flag_and_a_missing_result_are_caught(parses):
    """The checks can fail: a flag the script does not have, and a file that is not there."""
    text = ("`python -m experiments.benchmarks.step_speed --models smallgap --no_such_flag 1` "
            "and `results/no_such_file.json`")
    (module, args), = _commands(text)
    assert not parses(module, args)
    assert parses(module, args[:2])
    assert not _exists(_result_paths(text)[0])
    assert _exists("results/step_speed_fold_Ndev.json") and _exists("results/fashion_mnist_robust")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(shared_data, tmp_path):
    """The README's first example ("Using it"), run as a user would, in a fresh process from a
    repository folder next to ``shared/data`` (the layout its ``../shared/data`` paths assume); its
    comment's claim (mean CAM equals the logits) and its printed figures are checked."""
    import subprocess
    import sys

    from tests.conftest import fresh_process_env

    example = _python_blocks((ROOT / "README.md").read_text())[0]
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(shared_data)
    (tmp_path / "repo").mkdir()
    check = ("\nimport numpy as np\n"
             "assert cam.shape == (128, 7, 7, 10)\n"
             "np.testing.assert_allclose(cam.mean((1, 2)), f.logits(x), rtol=1e-5, atol=1e-5)\n"
             "acc = np.asarray(1 - robust.mean(1))\n"
             "print('CHECK', acc.tolist(), float(isa_curve(sneak).normalized_slope))\n")
    script = tmp_path / "repo" / "example.py"
    script.write_text(example + check)
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path / "repo",
                         env=fresh_process_env(),
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("CHECK"))
    acc, slope = line.split(" ", 1)[1].rsplit(" ", 1)
    acc = [float(a) for a in acc.strip("[]").split(",")]
    assert len(acc) == 6 and all(0.0 <= a <= 1.0 for a in acc)
    assert all(b <= a for a, b in zip(acc, acc[1:], strict=False))  # larger eps, lower accuracy
    assert math.isfinite(float(slope))
