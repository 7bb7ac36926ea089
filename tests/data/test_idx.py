"""IDX parsing, and clear errors for missing and corrupt files."""

import gzip

import numpy as np
import pytest

from jaxadv.data import CorruptDataError, load_dataset, parse_idx, read_idx, write_idx


def _write_split(directory, prefix, images, labels):
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_roundtrip_gz_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "a.idx", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)


def test_parse_known_header():
    data = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])
    np.testing.assert_array_equal(parse_idx(data), [7, 8, 9])


def test_bad_magic(tmp_path):
    (tmp_path / "bad.idx").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 10)
    with pytest.raises(CorruptDataError, match="bad IDX magic number"):
        read_idx(tmp_path / "bad.idx")


def test_truncated_gzip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8)
    blob = gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 50, 0, 0, 0, 28, 0, 0, 0, 28]) + arr.tobytes())
    (tmp_path / "t.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError, match="gzip stream is truncated"):
        read_idx(tmp_path / "t.gz")


def test_size_mismatch(tmp_path):
    data = bytes([0, 0, 8, 2, 0, 0, 0, 4, 0, 0, 0, 4]) + bytes(10)
    (tmp_path / "s.idx").write_bytes(data)
    with pytest.raises(CorruptDataError, match="size mismatch"):
        read_idx(tmp_path / "s.idx")


def test_missing_file_names_file_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "JAXADV_FASHION_MNIST_DIR" in msg


def test_decompressed_files_are_read_too(tmp_path):
    """A directory of gunzipped IDX files (read_idx reads both) loads like the .gz one."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    ds = load_dataset("fashion_mnist", "test", data_dir=str(tmp_path))
    got_images, got_labels = ds.arrays()
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(got_images[..., 0], images / 255.0, rtol=1e-6)


def test_env_var_overrides_directory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    _write_split(tmp_path, "t10k", rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, 7, dtype=np.uint8))
    monkeypatch.setenv("JAXADV_FASHION_MNIST_DIR", str(tmp_path))
    ds = load_dataset("fashion_mnist", "test")
    assert len(ds) == 7 and ds.image_shape == (28, 28, 1)
    images, labels = ds.get(np.arange(7))
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
    assert labels.dtype == np.int32


def test_images_and_labels_that_do_not_belong_together(tmp_path):
    _write_split(tmp_path, "train", np.zeros((5, 4, 4), np.uint8), np.zeros(6, np.uint8))
    with pytest.raises(ValueError, match="do not belong together"):
        load_dataset("fashion_mnist", "train", data_dir=str(tmp_path))


def test_unknown_split_and_missing_mnist_dir(monkeypatch):
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("fashion_mnist", "validation")
    monkeypatch.delenv("JAXADV_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="JAXADV_MNIST_DIR"):
        load_dataset("mnist_idx", "test")


def test_debian_fashion_mnist_if_installed():
    import os

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist is not installed (make data)")
    test = load_dataset("fashion_mnist", "test")
    train = load_dataset("fashion_mnist", "train")
    assert len(test) == 10_000 and len(train) == 60_000
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
