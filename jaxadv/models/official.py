"""Load the official pretrained MNIST checkpoints of Boopathy et al. (ICML 2020) into Flax params.

Format (../shared/data/boopathy-mnist/README.md): a pickle of a list, one entry per layer: a conv
layer is ``(W, b)`` with W in HWIO layout; a pool layer is a placeholder tuple (not weights); the
last entry is ``(W,)`` with W of shape (1, 1, C, K), the bias-free GAP head.

A pickle from outside can run code when loaded, so these files are read with an unpickler that
admits numpy arrays, scalars and dtypes only and refuses every other global. The pickles carry no
checksum of their own, so a file under one of the released names is checked against the SHA-256 of
the released file (``OFFICIAL_SHA256``) before it is read: a bit flip inside the weights, which
would otherwise load silently, is an error.
"""

import hashlib
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


# SHA-256 of the 20 released files (the copies in ../shared/data/boopathy-mnist/; `sha256sum
# mnist_*_100.pkl` there reproduces the table).
OFFICIAL_SHA256 = {
    "mnist_pool_adv_100.pkl":
        "52fd67407de28d9415bc435a7c8f5834f15a3c7589629891a87e44d2e8dc41ab",
    "mnist_pool_ig_100.pkl":
        "72ab8c7611d6bfd1990111e307d74912b17cf68bb3bc97b5f2053051d0718408",
    "mnist_pool_igsum_100.pkl":
        "83c8bcfc704b67f88ad945413938341b8cc59568e21a092795a2e0debfc6cd91",
    "mnist_pool_int2_100.pkl":
        "3e9536348bd3a4e5350c4045b5be428cf45760e5ffa5eccdaa3dede4b88c0708",
    "mnist_pool_int2adv_100.pkl":
        "a5849b4c72da563fb7d03342e6f51279abc9af19c9cb33f3148b9993e2bc6371",
    "mnist_pool_int_100.pkl":
        "f5e82dcd2c509b594976df6e4b1097d88eaa5ba1add6bce30f70cdfa811d506c",
    "mnist_pool_intadv_100.pkl":
        "3b6d996b996d3a8d6b4aec3f6e5af2816bb8cf2eac48c3e66eadb5ef07d7eee1",
    "mnist_pool_intone_100.pkl":
        "b54092cd0e52cc3df38bde32bc19b7cac4a26acfe4697a761d3627c68a0e2a79",
    "mnist_pool_normal_100.pkl":
        "e4dde92b3e5abe6e77125d569e1fa7901d2c81a9852d3dc8a86a2bb14aafc76c",
    "mnist_pool_trades_100.pkl":
        "f2efa83c834fcb1fd70eff476bda564d35ee5e5d29ab355bae781845c04ce1f4",
    "mnist_smallgap_adv_100.pkl":
        "e657ccbfff6800ad8484b10c3edf7fbe736d69e5e4b4838ea8368e99c0ef1382",
    "mnist_smallgap_ig_100.pkl":
        "ae2b53694e01edc0a45423b40fb2b9b17636fa07b3ae292d3ce72da883c6d323",
    "mnist_smallgap_igsum_100.pkl":
        "ded72f60aa12b8ff776e635b7c2d965422690761ba09825371c93aa27051fea4",
    "mnist_smallgap_int2_100.pkl":
        "24d501a427c62588ca564aa5fc93699a9da47f5fb0dfa0a32ea97362eca16e8a",
    "mnist_smallgap_int2adv_100.pkl":
        "2e969d57ea2f2234d007ab044049e3d224968a929db461708f578eb2eb367528",
    "mnist_smallgap_int_100.pkl":
        "b568fd30a8c573a621a57827030699700849da4f177fa5ee51ea47e4952f609a",
    "mnist_smallgap_intadv_100.pkl":
        "b11c053e9c6cb4d9f0c5d7607a0db7b3d4642d31b0ff3ffe38f6376407c7d51a",
    "mnist_smallgap_intone_100.pkl":
        "b2833829f6e9d511dfe0a91244610d49769bca0d994fe96581a837e261648dff",
    "mnist_smallgap_normal_100.pkl":
        "fe935d6dfd93798b5fac071c4c21de2e74a9fb36d0af18315dbf600ea7b31fcf",
    "mnist_smallgap_trades_100.pkl":
        "6e89bc11e599eba197f53182d5c0f5bfc8ad1fe2eb242029be41b2a172a53206",
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


def _read_checkpoint_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist. The official MNIST checkpoints are in "
            "../shared/data/boopathy-mnist/ (mnist_{smallgap,pool}_<method>_100.pkl).")
    with open(path, "rb") as f:
        return f.read()


def verify_official_checksum(path: str | os.PathLike, data: bytes | None = None) -> bool:
    """Checks a file named like a released checkpoint against the released file's SHA-256.

    Returns True when ``path``'s name is one of the 20 released names and its bytes (``data``, or
    the file's) match; False for any other name (nothing to compare with). Raises ValueError,
    naming both digests, when a released name holds other bytes.
    """
    path = os.fspath(path)
    expected = OFFICIAL_SHA256.get(os.path.basename(path))
    if expected is None:
        return False
    digest = hashlib.sha256(_read_checkpoint_bytes(path) if data is None else data).hexdigest()
    if digest != expected:
        raise ValueError(
            f"Checkpoint {path} is corrupt or truncated, or not the released file: its SHA-256 is "
            f"{digest[:16]}..., the released {os.path.basename(path)} has {expected[:16]}.... "
            "Re-copy it from the official release (../shared/data/boopathy-mnist/), or pass "
            "verify=False to load a file you changed on purpose.")
    return True


def safe_load_pickle(path: str | os.PathLike, data: bytes | None = None) -> object:
    """Unpickles ``path`` (or its already-read bytes ``data``) admitting only numpy arrays,
    scalars and dtypes."""
    path = os.fspath(path)
    if data is None:
        data = _read_checkpoint_bytes(path)
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


def load_official_checkpoint(path: str | os.PathLike, *, verify: bool = True
                             ) -> tuple[str, Params]:
    """Loads an official Boopathy et al. checkpoint.

    Args:
      path: ``<dataset>_<smallgap|pool>_<method>_<epochs>.pkl``.
      verify: check a file under a released name against the released SHA-256
        (:func:`verify_official_checksum`; other names are not checked) before reading it.

    Returns:
      (model name for ``get_model`` -- 'smallgap' or 'poolgap' --, Flax params dict). Apply with
      ``get_model(name).apply({'params': params}, x)``, x in [0, 1] of shape (B, 28, 28, 1).
    """
    info = parse_checkpoint_name(path)
    data = _read_checkpoint_bytes(os.fspath(path))
    if verify:
        verify_official_checksum(path, data)
    layers = safe_load_pickle(path, data)
    if not isinstance(layers, list):
        raise ValueError(f"{path}: expected a pickled list of layers, got {type(layers).__name__}.")
    params = _layers_to_params(layers, os.fspath(path))
    name = "smallgap" if info["model"] == "smallgap" else "poolgap"
    expected = 3 if name == "smallgap" else 2
    n_convs = sum(k.startswith("conv") for k in params)
    if n_convs != expected:
        raise ValueError(f"{path}: {name} needs {expected} conv layers, the file has {n_convs}.")
    return name, params
