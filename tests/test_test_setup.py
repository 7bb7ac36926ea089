"""The test set-up itself: the run-wide compilation cache of ``tests/conftest.py``."""

import os
import subprocess
import sys
import time

from tests.conftest import JIT_CACHE_PREFIX, jit_cache_owner, remove_stale_jit_caches


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _cache(root, pid, *, age_s: float, suffix: str = "abc123"):
    path = root / f"{JIT_CACHE_PREFIX}{pid}-{suffix}"
    path.mkdir()
    (path / "entry").write_bytes(b"x" * 10)
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def test_stale_caches_of_killed_runs_are_removed_and_others_kept(tmp_path):
    dead = _dead_pid()
    stale = _cache(tmp_path, dead, age_s=7200)
    recent = _cache(tmp_path, dead, age_s=10, suffix="def456")  # process gone, changed lately
    alive = _cache(tmp_path, os.getpid(), age_s=7200)  # this process: a live run
    other = tmp_path / f"{JIT_CACHE_PREFIX}notapid"
    other.mkdir()
    unrelated = tmp_path / "something-else-12"
    unrelated.mkdir()

    removed = remove_stale_jit_caches(str(tmp_path), min_age_s=3600)

    assert removed == [str(stale)]
    assert not stale.exists()
    for kept in (recent, alive, other, unrelated):
        assert kept.is_dir(), kept


def test_this_run_uses_its_own_cache_named_after_its_process():
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    pid = jit_cache_owner(os.path.basename(cache or ""))
    if pid is None:
        return  # the caller set a cache of their own (or switched it off): left as it is
    # The directory is made by the pytest process (the xdist controller under -n), which is this
    # process or its parent, and is alive.
    assert pid in (os.getpid(), os.getppid())
    assert os.path.isdir(cache)
