"""Checks of user inputs shared by the attacks and the attributions.

They inspect concrete values only: inside ``jit``/``vmap``/``grad`` the values are unknown and the
checks pass them through, so every checked function stays traceable. Each error names the bad
argument and the fix (the brief: bad input gets a clear error).
"""

import jax
import numpy as np

from jaxadv.types import Array


def is_concrete(v) -> bool:
    """True where ``v`` holds a value we may inspect (not a tracer inside jit/vmap/grad)."""
    return not isinstance(v, jax.core.Tracer)


def check_finite(x: Array, name: str = "x", *, fix: str) -> None:
    """Raises ValueError if a concrete ``x`` holds NaN or infinite entries, naming how many, the
    first examples (rows of the leading axis) that hold them, and ``fix``."""
    if not is_concrete(x):
        return
    # numpy, not jnp: under an outer jit, jnp ops on concrete closed-over values are staged.
    bad = ~np.isfinite(np.asarray(x))
    if not bad.any():
        return
    count = f"{int(bad.sum())} of them"
    if bad.ndim > 1:
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        count += f", in examples [{shown}]"
    raise ValueError(f"{name} contains NaN or infinite values ({count}); {fix}")


def is_int(value) -> bool:
    """Whether ``value`` is an integer: a Python or NumPy int, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """``value`` as a Python int if it is an integer (:func:`is_int`) in [``minimum``,
    ``maximum``]; else ValueError naming ``name`` and the allowed range."""
    if (not is_int(value) or value < minimum
            or (maximum is not None and value > maximum)):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {allowed}; got {value!r}.")
    return int(value)


def check_range(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """ValueError unless a concrete ``value`` (a number or array) is finite and inside the
    interval from ``low`` to ``high`` (closed ends unless ``low_open`` / ``high_open``; None: no
    bound there). Traced values pass, so a hyper-parameter may be a jit or vmap argument.
    ``what`` describes the value in the message."""
    if value is None or not is_concrete(value):
        return
    v = np.asarray(value)
    bad = ~np.isfinite(v)
    if low is not None:
        bad |= (v <= low) if low_open else (v < low)
    if high is not None:
        bad |= (v >= high) if high_open else (v > high)
    if np.any(bad):
        def num(b):
            return f"{b:g}"
        if low is None and high is None:
            raise ValueError(f"{name} must be a finite number; got {value}.")
        if high is None:
            where = f"{'>' if low_open else '>='} {num(low)}"
        elif low is None:
            where = f"{'<' if high_open else '<='} {num(high)}"
        else:
            where = (f"in {'(' if low_open else '['}{num(low)}, {num(high)}"
                     f"{')' if high_open else ']'}")
        desc = f" ({what})" if what else ""
        raise ValueError(f"{name} must be finite and {where}{desc}; got {value}.")


def check_nonnegative(name: str, value, what: str = "") -> None:
    """ValueError unless a concrete ``value`` (a number or array) is finite and >= 0; None and
    traced values pass. ``what`` describes the value in the message."""
    check_range(name, value, 0.0, what=what)
