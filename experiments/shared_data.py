"""The shared data the MNIST experiments read (``../shared/data``: the MNIST test set and the
official Boopathy et al. checkpoints), and the error when it is absent."""

import pathlib

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def require(path: pathlib.Path) -> None:
    """Stops the script with a message naming ``path`` and the fix when it does not exist."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: this script needs ../shared/data (the MNIST test set "
                         "and the official Boopathy et al. checkpoints); pass --shared DIR.")
