"""Datasets by name, as random-access sources of (images float32 in [0, 1] NHWC, int32 labels).

* ``fashion_mnist`` -- the offline default: IDX files of Debian's ``dataset-fashion-mnist`` package
  (directory: the ``data_dir`` argument, else ``$JAXADV_FASHION_MNIST_DIR``, else
  /usr/share/datasets/fashion-mnist).
* ``mnist_idx`` -- MNIST from local IDX files (``data_dir``, else ``$JAXADV_MNIST_DIR``), e.g. the
  MNIST test set in ../shared/data/mnist-test (test split only there).
* any other name (``mnist``, ``cifar10``, ``imagenet2012``, ...) -- tensorflow-datasets through the
  random-access ``tfds.data_source`` (no TensorFlow needed), on data already prepared in ``data_dir``
  (or tfds' default). Nothing is downloaded implicitly: an offline download retries for minutes
  before failing, so a missing dataset raises at once with the command that prepares it.
"""

import contextlib
import dataclasses
import glob
import os
import tempfile
from typing import Protocol

import numpy as np

from jaxadv.data.idx import read_idx

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist   (or: make data)"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


class Source(Protocol):
    """A random-access dataset: ``len(src)`` and ``src.get(indices) -> (images, labels)``."""

    name: str
    num_classes: int

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _to_float_images(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """An in-memory dataset.

    Attributes:
      images: (N, H, W, C), uint8 in [0, 255] or float in [0, 1].
      labels: (N,) integers in [0, num_classes).
      num_classes: K.
      name: for messages.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str = "arrays"

    def __post_init__(self):
        images, labels = self.images, np.asarray(self.labels)
        if images.ndim == 3:  # (N, H, W) grey images
            images = images[..., None]
            object.__setattr__(self, "images", images)
        if images.ndim != 4:
            raise ValueError(f"{self.name}: images must be (N, H, W, C); got shape {images.shape}.")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{self.name}: labels must be ({images.shape[0]},) to match the "
                             f"images; got shape {labels.shape}.")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes}); found "
                             f"range [{labels.min()}, {labels.max()}].")
        if images.dtype != np.uint8:
            if not np.all(np.isfinite(images)):
                raise ValueError(f"{self.name}: images contain NaN or infinite values.")
            if images.size and (images.min() < 0 or images.max() > 1):
                raise ValueError(
                    f"{self.name}: float images must lie in [0, 1] (found [{images.min():.3g}, "
                    f"{images.max():.3g}]); divide uint8 images by 255, and put any normalisation "
                    "inside the model so that attacks work in pixel units.")
        object.__setattr__(self, "labels", labels.astype(np.int32))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _to_float_images(self.images[indices]), self.labels[indices]

    def take(self, n: int) -> "ArrayDataset":
        """The first ``n`` examples."""
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images as float32 in [0, 1] and labels, in memory."""
        return _to_float_images(self.images), self.labels


class Subset:
    """Examples ``[start, stop)`` of any source (e.g. a validation split held out of training)."""

    def __init__(self, source: Source, start: int, stop: int):
        if not 0 <= start <= stop <= len(source):
            raise ValueError(f"Subset [{start}, {stop}) is outside the {len(source)} examples of "
                             f"{getattr(source, 'name', 'the source')}.")
        self.source, self.start, self.stop = source, int(start), int(stop)
        self.name = f"{getattr(source, 'name', 'source')}[{start}:{stop}]"
        self.num_classes = getattr(source, "num_classes", None)

    def __len__(self) -> int:
        return self.stop - self.start

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {self.name}.")
        return self.source.get(indices + self.start)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _gz_or_raw(path: str) -> str:
    """``path`` (a .gz name), or its decompressed name where only that exists."""
    raw = path[:-3]
    return raw if not os.path.exists(path) and os.path.exists(raw) else path


def load_idx_dataset(directory: str, split: str, *, name: str, provided_by: str,
                     num_classes: int = 10) -> ArrayDataset:
    """Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` from ``directory``."""
    if split not in _IDX_FILES:
        raise ValueError(f"{name}: unknown split {split!r}; choose 'train' or 'test'.")
    # The .gz files, or the same files already decompressed (read_idx reads both).
    image_file, label_file = (_gz_or_raw(os.path.join(directory, f)) for f in _IDX_FILES[split])
    images = read_idx(image_file, provided_by=provided_by)
    labels = read_idx(label_file, provided_by=provided_by)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: {image_file} holds {images.shape} but {label_file} holds "
                         f"{labels.shape}; the files do not belong together. Reinstall them.")
    return ArrayDataset(images[..., None], labels, num_classes, name=f"{name}:{split}")


@contextlib.contextmanager
def _no_empty_tfds_temp_dirs():
    """Removes the empty ``tmp*tfds`` directories that appear in the system's temporary directory
    inside the block. tensorflow-datasets 4.9 makes one for every builder of a dataset that is not
    prepared (``DatasetInfo.initialize_from_bucket`` creates it before it looks at GCS, which is
    off by default, and never removes it): two per failed :class:`TfdsSource`. ``os.rmdir`` removes
    only empty directories, so one that holds files stays."""
    pattern = os.path.join(tempfile.gettempdir(), "tmp*tfds")
    before = set(glob.glob(pattern))
    try:
        yield
    finally:
        for path in set(glob.glob(pattern)) - before:
            with contextlib.suppress(OSError):
                os.rmdir(path)


class TfdsSource:
    """A tensorflow-datasets dataset through ``tfds.data_source`` (random access, no TensorFlow)."""

    def __init__(self, name: str, split: str, *, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label"):
        import tensorflow_datasets as tfds

        self.name = f"{name}:{split}"
        self._image_key, self._label_key = image_key, label_key
        with _no_empty_tfds_temp_dirs():
            builder, self._source = self._open(tfds, name, split, data_dir)
        label_feature = builder.info.features[label_key]
        self.num_classes = int(label_feature.num_classes)

    @staticmethod
    def _open(tfds, name: str, split: str, data_dir: str | None):
        """(builder, random-access source), or a clear error."""
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:
            raise ValueError(f"tensorflow-datasets has no dataset {name!r} ({e}).") from e
        try:
            return builder, tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:
            where = builder.data_dir
            # download_and_prepare's --data_dir is the root that holds <name>/<version>
            root = data_dir or getattr(builder, "data_dir_root", None) or where
            if not builder.is_prepared():
                raise FileNotFoundError(
                    f"Dataset {name!r} is not prepared under {where}, and jaxadv never downloads "
                    "implicitly (offline, a download retries for minutes before failing). On a "
                    "machine with the network run:\n  python -m "
                    f"tensorflow_datasets.scripts.download_and_prepare --datasets={name} "
                    f"--data_dir={root} --file_format=array_record\n(it needs `pip install "
                    f"tensorflow`), then copy {root}/{name} here. Offline, use dataset "
                    "'fashion_mnist'.") from e
            raise ValueError(
                f"Dataset {name!r} under {where} cannot be read with random access ({e}). Prepare "
                "it with --file_format=array_record (random access needs array_record or "
                "parquet, not tfrecord).") from e

    def __len__(self) -> int:
        return len(self._source)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        records = [self._source[int(i)] for i in indices]
        images = np.stack([np.asarray(r[self._image_key]) for r in records])
        labels = np.asarray([int(r[self._label_key]) for r in records], np.int32)
        return _to_float_images(images), labels


def load_dataset(name: str, split: str, *, data_dir: str | None = None) -> Source:
    """Returns the dataset ``name``/``split`` as a random-access source (see the module docstring).

    Raises:
      FileNotFoundError: the data is missing; the message names the file and the command that
        provides it.
      jaxadv.data.idx.CorruptDataError: a file is corrupt.
    """
    if name == "fashion_mnist":
        directory = data_dir or os.environ.get("JAXADV_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR)
        return load_idx_dataset(directory, split, name=name,
                                provided_by=FASHION_MNIST_INSTALL + ", or point data_dir / "
                                "$JAXADV_FASHION_MNIST_DIR at a copy of the IDX files")
    if name == "mnist_idx":
        directory = data_dir or os.environ.get("JAXADV_MNIST_DIR")
        if not directory:
            raise FileNotFoundError(
                "Dataset 'mnist_idx' needs a directory of MNIST IDX files: pass data_dir= (config "
                "dataset.data_dir, command line --data_dir) or set JAXADV_MNIST_DIR, e.g. to "
                "../shared/data/mnist-test.")
        return load_idx_dataset(directory, split, name=name,
                                provided_by="the MNIST IDX files (../shared/data/mnist-test holds the "
                                "test split; the train split needs tensorflow-datasets 'mnist')")
    return TfdsSource(name, split, data_dir=data_dir)
