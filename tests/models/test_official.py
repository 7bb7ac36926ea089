"""The official Boopathy et al. MNIST checkpoints: safe loading, numpy parity, accuracy."""

import pickle

import jax
import numpy as np
import pytest

from jaxadv.data import load_dataset
from jaxadv.models import get_model, load_official_checkpoint, safe_load_pickle
from jaxadv.models.official import UnsafeCheckpointError


def _same_pad(x, k, s):
    n, h, w, c = x.shape
    pads = []
    for size in (h, w):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _np_conv(x, w, b, stride):
    """An independent numpy conv (TF 'SAME' padding, HWIO kernel) by explicit patch sums."""
    k = w.shape[0]
    xp = _same_pad(x, k, stride)
    n, hp, wp, c = xp.shape
    ho, wo = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    out = np.zeros((n, ho, wo, w.shape[3]), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
            out += patch.astype(np.float64) @ w[i, j].astype(np.float64)
    return out + b


def _np_smallgap(params, x):
    h = _np_conv(x, params["conv1"]["kernel"], params["conv1"]["bias"], 2)
    h = _np_conv(np.maximum(h, 0), params["conv2"]["kernel"], params["conv2"]["bias"], 2)
    a = _np_conv(np.maximum(h, 0), params["conv3"]["kernel"], params["conv3"]["bias"], 1)
    return a.mean(axis=(1, 2)) @ params["head"]["kernel"].astype(np.float64)


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_dataset("mnist_idx", "test", data_dir=str(shared_data / "mnist-test"))


def test_smallgap_normal_matches_numpy_and_is_accurate(shared_data, mnist):
    name, params = load_official_checkpoint(
        shared_data / "boopathy-mnist" / "mnist_smallgap_normal_100.pkl")
    assert name == "smallgap"
    model = get_model(name)
    x, y = mnist.arrays()
    ours = np.asarray(model.apply({"params": params}, x[:64]))
    ref = _np_smallgap(params, x[:64])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    logits = jax.jit(lambda v: model.apply({"params": params}, v))
    pred = np.concatenate([np.asarray(logits(x[i:i + 2000])).argmax(-1)
                           for i in range(0, len(x), 2000)])
    acc = float((pred == y).mean())
    assert acc >= 0.97, acc


@pytest.mark.parametrize("stem", ["pool_normal", "smallgap_adv", "pool_int2"])
def test_other_checkpoints_load_and_classify(shared_data, mnist, stem):
    name, params = load_official_checkpoint(shared_data / "boopathy-mnist" / f"mnist_{stem}_100.pkl")
    x, y = mnist.arrays()
    pred = np.asarray(get_model(name).apply({"params": params}, x[:500])).argmax(-1)
    assert (pred == y[:500]).mean() > 0.85


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_rejects_non_numpy_pickles(tmp_path):
    bad = tmp_path / "mnist_smallgap_evil_100.pkl"
    bad.write_bytes(pickle.dumps([(_Evil(),)]))
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        safe_load_pickle(bad)
    with pytest.raises(UnsafeCheckpointError):
        load_official_checkpoint(bad)


def test_corrupt_and_missing_checkpoints(tmp_path, shared_data):
    src = (shared_data / "boopathy-mnist" / "mnist_smallgap_normal_100.pkl").read_bytes()
    trunc = tmp_path / "mnist_smallgap_normal_100.pkl"
    trunc.write_bytes(src[: len(src) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_official_checkpoint(trunc)
    with pytest.raises(FileNotFoundError, match="boopathy-mnist"):
        load_official_checkpoint(tmp_path / "mnist_smallgap_none_100.pkl")
    with pytest.raises(ValueError, match="Cannot tell the model"):
        load_official_checkpoint(tmp_path / "weights.pkl")


def test_wrong_layer_count_is_rejected(tmp_path):
    w = np.zeros((4, 4, 1, 16), np.float32)
    path = tmp_path / "mnist_smallgap_x_100.pkl"
    path.write_bytes(pickle.dumps([(w, np.zeros(16, np.float32)),
                                   (np.zeros((1, 1, 16, 10), np.float32),)]))
    with pytest.raises(ValueError, match="needs 3 conv layers"):
        load_official_checkpoint(path)


def test_every_released_file_matches_its_digest(shared_data):
    from jaxadv.models.official import OFFICIAL_SHA256, verify_official_checksum
    files = sorted(p.name for p in (shared_data / "boopathy-mnist").glob("*.pkl"))
    assert files == sorted(OFFICIAL_SHA256)
    for name in files:
        assert verify_official_checksum(shared_data / "boopathy-mnist" / name)


def test_a_bit_flip_inside_the_weights_is_refused(tmp_path, shared_data):
    """The pickle stays valid and finite (the flip is in a weight's low mantissa bit), so only the
    digest can tell; verify=False loads it for a file changed on purpose."""
    src = shared_data / "boopathy-mnist" / "mnist_smallgap_normal_100.pkl"
    data = bytearray(src.read_bytes())
    _, params = load_official_checkpoint(src)
    w = params["conv3"]["kernel"]
    offset = bytes(data).find(w.tobytes()[:64])
    assert offset > 0
    data[offset] ^= 1  # lowest mantissa bit of the first float32 of conv3's kernel
    flipped = tmp_path / src.name
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256.*verify=False"):
        load_official_checkpoint(flipped)
    _, changed = load_official_checkpoint(flipped, verify=False)
    diff = np.abs(changed["conv3"]["kernel"] - w)
    assert int((diff > 0).sum()) == 1
