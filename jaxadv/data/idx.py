"""Reading IDX files (the MNIST / Fashion-MNIST format), gzipped or raw, with clear errors.

IDX layout (LeCun et al.): two zero bytes, a type byte (0x08 = uint8), a byte with the number of
dimensions, then one big-endian uint32 per dimension, then the data.
"""

import gzip
import os
import zlib

import numpy as np


class CorruptDataError(ValueError):
    """A data file exists but cannot be parsed (bad magic number, truncated gzip, size mismatch)."""


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file into a numpy array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        head = data[:4].hex() if data else "empty"
        raise CorruptDataError(
            f"{source}: bad IDX magic number (first bytes {head}); expected 0x0000 followed by a "
            "type byte such as 0x08. The file is not an IDX file or is corrupt; reinstall it.")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{source}: IDX header truncated ({len(data)} bytes).")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise CorruptDataError(
            f"{source}: IDX size mismatch: header says shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(data) - header}. The file is truncated or corrupt; reinstall it.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, *, provided_by: str | None = None) -> np.ndarray:
    """Reads an IDX file (``.gz`` or raw).

    Args:
      path: the file.
      provided_by: the command that provides the file, quoted in the error if it is missing.

    Raises:
      FileNotFoundError: naming the file and ``provided_by``.
      CorruptDataError: bad magic number, truncated gzip or size mismatch.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        hint = f" It is provided by: {provided_by}" if provided_by else ""
        raise FileNotFoundError(f"Data file {path} is missing.{hint}")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise CorruptDataError(
                f"{path}: the gzip stream is truncated or corrupt ({e}); reinstall the file"
                + (f" ({provided_by})." if provided_by else ".")) from e
    return parse_idx(raw, source=path)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as IDX (gzipped if ``path`` ends with .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = os.fspath(path)
    if path.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1)
    with open(path, "wb") as f:
        f.write(data)
