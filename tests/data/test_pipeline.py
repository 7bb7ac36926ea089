"""Deterministic shuffling, resume-exact order, padded/masked eval batches, per-host slicing,
in-memory dataset validation, and tensorflow-datasets through mock data."""

import tempfile

import jax
import numpy as np
import pytest

from jaxadv.data import (
    ArrayDataset,
    eval_batches,
    load_dataset,
    process_slice,
    steps_per_epoch,
    train_batches,
)


def _ds(n=23, num_classes=5):
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8),
                        np.arange(n) % num_classes, num_classes)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_train_order_is_a_function_of_key():
    ds = _ds()
    a = _take(train_batches(ds, batch_size=4, key=jax.random.key(1)), 12)
    b = _take(train_batches(ds, batch_size=4, key=jax.random.key(1)), 12)
    c = _take(train_batches(ds, batch_size=4, key=jax.random.key(2)), 12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, c, strict=True))


def test_each_epoch_is_a_permutation_and_epochs_differ():
    ds = ArrayDataset(np.zeros((20, 2, 2, 1), np.uint8), np.arange(20) % 10, 10)
    ds = ArrayDataset((np.arange(20, dtype=np.uint8)[:, None, None, None]
                       * np.ones((1, 2, 2, 1), np.uint8)), np.arange(20) % 10, 10)
    it = train_batches(ds, batch_size=5, key=jax.random.key(0))
    seen = [np.round(b["image"][:, 0, 0, 0] * 255).astype(int) for b in _take(it, 8)]
    e0, e1 = np.concatenate(seen[:4]), np.concatenate(seen[4:])
    assert sorted(e0) == list(range(20)) and sorted(e1) == list(range(20))
    assert not np.array_equal(e0, e1)


def test_resume_sees_the_same_batches():
    ds = _ds()
    full = _take(train_batches(ds, batch_size=4, key=jax.random.key(3)), 13)
    resumed = _take(train_batches(ds, batch_size=4, key=jax.random.key(3), start_step=7), 6)
    for x, y in zip(full[7:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_eval_batches_pad_and_mask_without_dropping():
    ds = _ds(n=23)
    batches = list(eval_batches(ds, batch_size=8))
    assert len(batches) == 3
    assert all(b["image"].shape == (8, 4, 4, 1) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 23 and not mask[23:].any()
    labels = np.concatenate([b["label"] for b in batches])[mask]
    np.testing.assert_array_equal(labels, ds.labels)


def test_per_host_slices_partition_the_global_batch():
    ds = _ds(n=40)
    glob = next(train_batches(ds, batch_size=8, key=jax.random.key(0)))
    parts = [next(train_batches(ds, batch_size=8, key=jax.random.key(0), process_index=i,
                                process_count=2)) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), glob["label"])
    ev = [list(eval_batches(ds, batch_size=8, num_examples=13, process_index=i, process_count=2))
          for i in range(2)]
    assert sum(int(b["mask"].sum()) for part in ev for b in part) == 13
    with pytest.raises(ValueError, match="not divisible"):
        process_slice(9, 0, 2)


def test_batch_size_errors():
    with pytest.raises(ValueError, match="fewer than one batch"):
        steps_per_epoch(3, 8)
    with pytest.raises(ValueError, match="positive"):
        steps_per_epoch(3, 0)


@pytest.mark.parametrize("images,labels,match", [
    (np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 2]), "labels must be"),
    (np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 2, 10]), "must lie in"),
    (np.full((2, 2, 2, 1), np.nan, np.float32), np.array([0, 1]), "NaN"),
    (np.full((2, 2, 2, 1), 3.0, np.float32), np.array([0, 1]), r"\[0, 1\]"),
    (np.zeros((2, 2), np.float32), np.array([0, 1]), r"\(N, H, W, C\)"),
])
def test_array_dataset_validation(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(images, labels, 10)


@pytest.fixture
def tfds_temp_in_tmp_path(tmp_path, monkeypatch):
    """Temporary files of the test in its own ``tmp_path``. Building a tensorflow-datasets builder
    for a dataset that is not prepared (and under ``mock_data``) leaves an empty
    ``tmp*tfds`` directory in the temporary directory (tfds 4.9's
    ``DatasetInfo.initialize_from_bucket`` creates it before it checks GCS, and never removes it;
    load_dataset removes those its own call made, a test's direct ``tfds.builder`` does not);
    pytest cleans ``tmp_path`` up, so the tests leave nothing in /tmp."""
    own = tmp_path / "tempfile"
    own.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own))
    return own


def test_tfds_mock_data_through_data_source(tfds_temp_in_tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        src = load_dataset("mnist", "train")
        assert len(src) == 12 and src.num_classes == 10
        images, labels = src.get(np.arange(5))
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert labels.shape == (5,) and labels.dtype == np.int32


def test_tfds_unprepared_dataset_fails_fast_without_download(tmp_path, tfds_temp_in_tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_dataset("cifar10", "train", data_dir=str(tmp_path))


def test_a_failed_load_leaves_no_empty_tfds_directory_behind(tmp_path, tfds_temp_in_tmp_path):
    """tensorflow-datasets leaves an empty ``tmp*tfds`` directory per builder of an unprepared
    dataset (fixture above); load_dataset removes the ones its call made, and only those."""
    pytest.importorskip("tensorflow_datasets")
    other = tfds_temp_in_tmp_path / "tmpotherstfds"  # another process's, made before the call
    other.mkdir()
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_dataset("cifar10", "train", data_dir=str(tmp_path / "data"))
    assert sorted(tfds_temp_in_tmp_path.glob("tmp*tfds")) == [other]


def test_the_prepare_command_names_the_data_root(tmp_path, tfds_temp_in_tmp_path):
    """download_and_prepare's --data_dir is the root that holds <name>/<version>: the message's
    command must not name the versioned directory (that prepares into root/cifar10/3.0.2/cifar10/),
    whether data_dir is given or tensorflow-datasets' default."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError) as given:
        load_dataset("cifar10", "train", data_dir=str(tmp_path))
    assert f"--data_dir={tmp_path} " in str(given.value)
    assert f"not prepared under {tmp_path}/cifar10/" in str(given.value)
    if tfds.builder("cifar10").is_prepared():
        return  # this machine has CIFAR-10 in tensorflow-datasets' default directory
    with pytest.raises(FileNotFoundError) as default:
        load_dataset("cifar10", "train")
    command = str(default.value).split("--data_dir=")[1].split()[0]
    assert "/cifar10" not in command, command
