"""Input errors of the command-line programs: the message alone, exit status 1, unless
--traceback (experiments.script_errors)."""

import subprocess
import sys

import pytest

from experiments.script_errors import run_script
from tests.conftest import REPO


def test_an_input_error_prints_its_message_and_exits_1(capsys):
    seen = []

    def main(argv):
        seen.append(argv)
        raise FileNotFoundError("data file X is missing; run make data")

    with pytest.raises(SystemExit) as exit_info:
        run_script(main, "prog", ["--n", "3"])
    assert exit_info.value.code == 1 and seen == [["--n", "3"]]
    err = capsys.readouterr().err
    assert err.startswith("prog: error: data file X is missing; run make data\n")
    assert "FileNotFoundError" in err and "Traceback" not in err


def test_traceback_flag_reraises_and_is_not_passed_on(monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise ValueError("eps must be >= 0")

    with pytest.raises(ValueError, match="eps must be"):
        run_script(main, "prog", ["--traceback", "--n", "3"])
    assert seen == [["--n", "3"]]
    monkeypatch.setenv("JAXADV_TRACEBACK", "1")
    with pytest.raises(ValueError, match="eps must be"):
        run_script(main, "prog", [])


def test_other_exceptions_keep_their_traceback():
    def main(argv):
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        run_script(main, "prog", [])


def test_an_experiment_script_reports_a_bad_argument_without_a_traceback():
    out = subprocess.run([sys.executable, "-m", "experiments.fashion_mnist_robust", "--quick",
                          "--methods", "nosuch"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.startswith("experiments.fashion_mnist_robust: error: Unknown method "
                                 "'nosuch'"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
