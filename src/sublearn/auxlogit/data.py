"""Digit images for the auxiliary-logit toy: sklearn's bundled 8x8 digits or a local MNIST.

Both are returned as float32 tensors centred to [-1, 1]. The centring matters: the student is
distilled on noise in [-1, 1], and the transfer is much weaker when the digits live in [0, 1]
while the noise does not.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sublearn.errors import SublearnError

N_CLASSES = 10

# The four files of the MNIST distribution, each possibly gzipped.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """Flattened images in [-1, 1] and integer labels in 0..9."""

    name: str
    x_train: Tensor  # [n_train, n_features] float32
    y_train: Tensor  # [n_train] int64
    x_test: Tensor
    y_test: Tensor

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "n_features": self.n_features,
        }


def load(dataset: str, mnist_path: str | None = None) -> Dataset:
    if dataset == "digits":
        return load_digits()
    if dataset == "mnist":
        if not mnist_path:
            raise SublearnError(
                "--mnist-path: required with --dataset mnist (a folder of IDX files or an .npz)"
            )
        return load_mnist(mnist_path)
    raise SublearnError(f"--dataset: unknown dataset {dataset!r} (use digits or mnist)")


def load_digits(test_fraction: float = 0.25) -> Dataset:
    """sklearn's 1,797 bundled 8x8 digits (pixel values 0..16), no download.

    The train/test split is fixed (random_state 0, stratified) so that runs with different
    seeds are scored on the same test images.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    x = bunch.data.astype(np.float32) / 8.0 - 1.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=0, stratify=y
    )
    return _tensors("digits", x_tr, y_tr, x_te, y_te)


def load_mnist(path: str | Path) -> Dataset:
    """MNIST from a local `.npz` (keys x_train, y_train, x_test, y_test, as Keras ships it)
    or from a folder holding the four IDX files (optionally `.gz`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SublearnError(f"{path}: no such file or folder (expected MNIST as .npz or IDX files)")
    if path.is_dir():
        arrays = {key: _read_idx(_find_idx(path, stem)) for key, stem in IDX_FILES.items()}
    elif path.suffix == ".npz":
        arrays = _read_npz(path)
    else:
        raise SublearnError(f"{path}: expected a .npz file or a folder of MNIST IDX files")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise SublearnError(f"{path}: {len(x)} {split} images but {len(y)} {split} labels")
        if len(x) == 0:
            raise SublearnError(f"{path}: the {split} split is empty")
    x_tr, x_te = (_centre(path, arrays[k]) for k in ("x_train", "x_test"))
    if x_tr.shape[1] != x_te.shape[1]:
        raise SublearnError(
            f"{path}: train images have {x_tr.shape[1]} pixels, test images {x_te.shape[1]}"
        )
    y_tr, y_te = (_labels(path, arrays[k]) for k in ("y_train", "y_test"))
    return _tensors("mnist", x_tr, y_tr, x_te, y_te)


def _find_idx(folder: Path, stem: str) -> Path:
    # Both the canonical hyphenated names and the dotted variants torchvision writes.
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    raise SublearnError(f"{folder}: missing MNIST file {stem} (or {stem}.gz)")


def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file: a big-endian magic (0, 0, dtype, ndim), ndim sizes, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SublearnError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SublearnError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise SublearnError(f"{path}: IDX type {data[2]:#04x} is not unsigned bytes (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SublearnError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise SublearnError(
            f"{path}: header promises {expected} bytes of data for shape {shape}, "
            f"found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise SublearnError(
                    f"{path}: missing arrays {missing} (found {sorted(z.files)}; "
                    f"expected {list(NPZ_KEYS)})"
                )
            return {k: z[k] for k in NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SublearnError(f"{path}: not a readable .npz file ({e})") from None


def _centre(path: Path, x: np.ndarray) -> np.ndarray:
    """Flatten to [n, pixels] and map to [-1, 1]: 0..255 if any value exceeds 1, else 0..1."""
    if x.ndim < 2:
        raise SublearnError(f"{path}: images must have at least 2 dimensions, got {x.shape}")
    x = x.reshape(len(x), -1).astype(np.float32)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise SublearnError(f"{path}: pixel values must lie in [0, 255] or [0, 1]")
    scale = 255.0 if x.size and x.max() > 1.0 else 1.0
    x *= 2.0 / scale  # in place: MNIST's 188 MB are not copied twice more
    x -= 1.0
    return x


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES or not np.all(y == np.round(y))):
        raise SublearnError(f"{path}: labels must be integers 0..{N_CLASSES - 1}")
    return y.astype(np.int64)


def _tensors(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray
) -> Dataset:
    return Dataset(
        name,
        torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_tr, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(x_te, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_te, dtype=np.int64)),
    )
