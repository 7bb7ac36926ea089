"""The two things every experiment and benchmark script does at its end: record the command that
reproduces its numbers, and write its JSON results without risking a file already there."""

import json
import os
import pathlib
import sys


def command(module: str, argv: list[str] | None) -> str:
    """The shell command that reproduces a run: ``python -m MODULE ARGS``, with ``argv`` as passed to
    the script's ``main`` (``None``: the process's own ``sys.argv[1:]``)."""
    return f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)


def write_json(path: str | os.PathLike, obj, *, indent: int = 1, sort_keys: bool = False,
               allow_nan: bool = True) -> pathlib.Path:
    """Writes ``obj`` as JSON at ``path``, creating its folder. The text goes to a temporary file
    that then replaces ``path``, so an error while encoding (a value JSON cannot hold, or a NaN
    with ``allow_nan=False``) or an interrupted write leaves an earlier file at ``path`` whole.
    ``indent``, ``sort_keys`` and ``allow_nan`` are :func:`json.dumps`'s."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
