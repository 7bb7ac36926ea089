"""jaxadv.validation: the shared non-finite check of the attacks and the attributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv import validation
from jaxadv.attacks import pgd


def test_names_the_count_the_first_examples_and_the_fix():
    x = np.zeros((8, 3, 2), np.float32)
    x[[1, 2, 3, 4, 6, 7], 0, 0] = np.nan
    x[7, 1, 1] = -np.inf
    with pytest.raises(ValueError, match=r"^x contains NaN or infinite values \(7 of them, in "
                                         r"examples \[1, 2, 3, 4, 6, \.\.\.\]\); mend it\.$"):
        validation.check_finite(x, fix="mend it.")


def test_one_dimensional_values_have_no_examples_clause():
    with pytest.raises(ValueError,
                       match=r"^eps contains NaN or infinite values \(1 of them\); fix\.$"):
        validation.check_finite(np.array([0.1, np.inf]), "eps", fix="fix.")


def test_finite_and_traced_values_pass():
    assert validation.check_finite(np.ones((2, 2)), fix="") is None
    x = np.zeros((3, 2), np.float32)
    x[[0, 2], 1] = np.nan
    with pytest.raises(ValueError, match=r"\(2 of them, in examples \[0, 2\]\)"):
        validation.check_finite(x, fix="")
    out = jax.jit(lambda v: (validation.check_finite(v, fix=""), v + 1)[1])(jnp.full((2,), jnp.nan))
    assert np.isnan(np.asarray(out)).all()


def test_attacks_name_the_examples_too():
    logits_fn = lambda v: v.reshape(v.shape[0], -1)[:, :3]  # noqa: E731
    x = np.zeros((3, 2, 2, 1), np.float32)
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or infinite values \(1 of them, in "
                                         r"examples \[2\]\).*before attacking them"):
        pgd(logits_fn, jnp.asarray(x), jnp.array([0, 1, 2]), jax.random.key(0), eps=0.1,
            step_size=0.05, num_steps=1)
