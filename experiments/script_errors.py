"""How the command-line programs report an error in their input.

An error whose message names what is wrong with the input and how to fix it (a missing or
corrupt file, a value out of range, a diverging run) is printed alone, ``PROG: error: MESSAGE``,
with exit status 1; ``--traceback`` (or ``JAXADV_TRACEBACK=1``) shows where it was raised. Other
exceptions (bugs) keep their traceback. Used by ``jaxadv`` (:mod:`experiments.main`) and the
experiment scripts (:func:`run_script`).
"""

import os
import pickle
import sys
from collections.abc import Callable

INPUT_ERRORS = (ValueError, OSError, pickle.UnpicklingError, FloatingPointError)


def report_input_error(prog: str, error: BaseException) -> None:
    """Writes ``error``'s message for ``prog`` to stderr and exits with status 1."""
    sys.stderr.write(f"{prog}: error: {error}\n(--traceback shows where it was raised: "
                     f"{type(error).__name__})\n")
    sys.exit(1)


def wants_traceback(argv=()) -> bool:
    """Whether ``argv`` holds ``--traceback`` or the environment sets ``JAXADV_TRACEBACK``."""
    return "--traceback" in argv or os.environ.get("JAXADV_TRACEBACK", "") not in ("", "0")


def run_script(main: Callable, prog: str, argv=None):
    """Runs ``main(argv)`` (default ``sys.argv[1:]``, less ``--traceback``) and reports an input
    error as the module docstring says."""
    argv = sys.argv[1:] if argv is None else list(argv)
    show = wants_traceback(argv)
    try:
        return main([a for a in argv if a != "--traceback"])
    except INPUT_ERRORS as error:
        if show:
            raise
        report_input_error(prog, error)
