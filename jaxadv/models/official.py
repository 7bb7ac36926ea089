"""Load the official pretrained MNIST checkpoints of Boopathy et al. (ICML 2020) into Flax params.

Format (../shared/data/boopathy-mnist/README.md): a pickle of a list, one entry per layer: a conv
layer is ``(W, b)`` with W in HWIO layout; a pool layer is a placeholder tuple (not weights); the
last entry is ``(W,)`` with W of shape (1, 1, C, K), the bias-free GAP head.

A pickle from outside can run code when loaded, so these files are read with an unpickler that
admits numpy arrays, scalars and dtypes only and refuses every other global.
"""

import io
import os
import pickle
import re

import numpy as np

from jaxadv.types import Params

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """Raised when a checkpoint pickle refers to anything but numpy arrays, scalars and dtypes."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"Refusing to load {module}.{name}: an official checkpoint may only contain numpy "
            "arrays, scalars and dtypes. This file is not a Boopathy et al. checkpoint, or it has "
            "been tampered with; do not load it with plain pickle.")


def safe_load_pickle(path: str | os.PathLike) -> object:
    """Unpickles ``path`` admitting only numpy arrays, scalars and dtypes."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. The official MNIST checkpoints are in "
            "../shared/data/boopathy-mnist/ (mnist_{smallgap,pool}_<method>_100.pkl).")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # truncated or corrupt file
        raise ValueError(
            f"Checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); "
            "re-copy it from the official release.") from e


def _layers_to_params(layers: list, path: str) -> Params:
    convs, head = [], None
    for i, entry in enumerate(layers):
        if not isinstance(entry, tuple | list):
            raise ValueError(f"{path}: layer {i} is a {type(entry).__name__}, expected a tuple.")
        arrays = [np.asarray(a) for a in entry]
        if len(arrays) == 2 and arrays[0].ndim == 4:
            w, b = arrays
            if b.shape != (w.shape[-1],):
                raise ValueError(f"{path}: conv layer {i} has W {w.shape} but b {b.shape}.")
            convs.append((w.astype(np.float32), b.astype(np.float32)))
        elif len(arrays) == 1 and arrays[0].ndim == 4 and arrays[0].shape[:2] == (1, 1):
            head = arrays[0][0, 0].astype(np.float32)
        # anything else is a pool placeholder
    if head is None:
        raise ValueError(f"{path}: no (1, 1, C, K) head found in the checkpoint's last layer.")
    params = {f"conv{j + 1}": {"kernel": w, "bias": b} for j, (w, b) in enumerate(convs)}
    params["head"] = {"kernel": head}
    for w in np.concatenate([v.ravel() for d in params.values() for v in d.values()])[None]:
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{path}: the checkpoint holds NaN or infinite weights.")
    return params


def parse_checkpoint_name(path: str | os.PathLike) -> dict[str, str]:
    """``mnist_smallgap_int2_100.pkl`` -> {'dataset': 'mnist', 'model': 'smallgap',
    'method': 'int2', 'epochs': '100'}."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    m = re.fullmatch(r"(?P<dataset>[a-z0-9]+)_(?P<model>smallgap|pool)_(?P<method>[a-z0-9]+)_"
                     r"(?P<epochs>\d+)", stem)
    if m is None:
        raise ValueError(
            f"Cannot tell the model from the checkpoint name {stem!r}; expected "
            "<dataset>_<smallgap|pool>_<method>_<epochs>.pkl.")
    return m.groupdict()


def load_official_checkpoint(path: str | os.PathLike) -> tuple[str, Params]:
    """Loads an official Boopathy et al. checkpoint.

    Returns:
      (model name for ``get_model`` -- 'smallgap' or 'poolgap' --, Flax params dict). Apply with
      ``get_model(name).apply({'params': params}, x)``, x in [0, 1] of shape (B, 28, 28, 1).
    """
    info = parse_checkpoint_name(path)
    layers = safe_load_pickle(path)
    if not isinstance(layers, list):
        raise ValueError(f"{path}: expected a pickled list of layers, got {type(layers).__name__}.")
    params = _layers_to_params(layers, os.fspath(path))
    name = "smallgap" if info["model"] == "smallgap" else "poolgap"
    expected = 3 if name == "smallgap" else 2
    n_convs = sum(k.startswith("conv") for k in params)
    if n_convs != expected:
        raise ValueError(f"{path}: {name} needs {expected} conv layers, the file has {n_convs}.")
    return name, params
