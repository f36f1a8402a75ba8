"""Digits and local MNIST: shapes, [-1, 1] centring and clear errors for bad paths."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sublearn.auxlogit.data import IDX_FILES, Dataset, load, load_digits, load_mnist
from sublearn.errors import SublearnError

RNG = np.random.default_rng(0)
X_TRAIN = RNG.integers(0, 256, (12, 4, 4), dtype=np.uint8)
Y_TRAIN = RNG.integers(0, 10, 12).astype(np.uint8)
X_TEST = RNG.integers(0, 256, (5, 4, 4), dtype=np.uint8)
Y_TEST = RNG.integers(0, 10, 5).astype(np.uint8)
ARRAYS = {"x_train": X_TRAIN, "y_train": Y_TRAIN, "x_test": X_TEST, "y_test": Y_TEST}


def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _write_idx(folder: Path, gz: bool) -> None:
    for key, stem in IDX_FILES.items():
        blob = _idx_bytes(ARRAYS[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)


def _check(ds: Dataset) -> None:
    expected = X_TRAIN.reshape(12, -1).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(ds.x_train.numpy(), expected, atol=1e-6)
    assert ds.x_test.shape == (5, 16)
    assert ds.y_train.dtype == torch.int64
    assert ds.y_test.tolist() == Y_TEST.tolist()


def test_digits_are_centred_and_split_the_same_way_every_time() -> None:
    ds = load_digits()
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64)
    assert ds.x_train.min() == -1 and ds.x_train.max() == 1
    assert set(ds.y_train.tolist()) == set(range(10))
    assert torch.equal(ds.x_test, load_digits().x_test)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path: Path, gz: bool) -> None:
    _write_idx(tmp_path, gz)
    _check(load_mnist(tmp_path))


def test_npz_uint8_and_unit_floats(tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", **ARRAYS)
    _check(load("mnist", str(tmp_path / "mnist.npz")))
    floats = {**ARRAYS, "x_train": X_TRAIN / 255.0, "x_test": X_TEST / 255.0}
    np.savez(tmp_path / "unit.npz", **floats)
    _check(load_mnist(tmp_path / "unit.npz"))


def test_wrong_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mnist.npz"
    with pytest.raises(SublearnError, match="nowhere"):
        load_mnist(missing)
    with pytest.raises(SublearnError, match="mnist-path"):
        load("mnist", None)


def test_incomplete_or_corrupt_files_are_explained(tmp_path: Path) -> None:
    _write_idx(tmp_path, gz=False)
    (tmp_path / IDX_FILES["y_test"]).unlink()
    with pytest.raises(SublearnError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    (tmp_path / IDX_FILES["y_test"]).write_bytes(b"\x08\x03junk")
    with pytest.raises(SublearnError, match="bad magic"):
        load_mnist(tmp_path)
    (tmp_path / IDX_FILES["y_test"]).write_bytes(_idx_bytes(Y_TEST)[:-1])
    with pytest.raises(SublearnError, match="header promises"):
        load_mnist(tmp_path)
    (tmp_path / IDX_FILES["y_test"]).write_bytes(_idx_bytes(Y_TEST[:4]))
    with pytest.raises(SublearnError, match="5 test images but 4 test labels"):
        load_mnist(tmp_path)


def test_bad_npz_contents(tmp_path: Path) -> None:
    np.savez(tmp_path / "partial.npz", x_train=X_TRAIN, y_train=Y_TRAIN)
    with pytest.raises(SublearnError, match=r"partial\.npz: missing arrays"):
        load_mnist(tmp_path / "partial.npz")
    np.savez(tmp_path / "labels.npz", **{**ARRAYS, "y_test": Y_TEST + 10})
    with pytest.raises(SublearnError, match="labels must be integers"):
        load_mnist(tmp_path / "labels.npz")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(SublearnError, match=r"fake\.npz: not a readable"):
        load_mnist(tmp_path / "fake.npz")
    (tmp_path / "mnist.csv").write_text("1,2,3")
    with pytest.raises(SublearnError, match="expected a .npz"):
        load_mnist(tmp_path / "mnist.csv")
