"""Training-run identity and files: run ids, storage folders and labels.

A run id is the first 24 hex digits of the run fingerprint, the SHA-256 of
the canonical training spec and the dataset's content hash, so the same spec
on the same data always gets the same run id. With API keys on, the owner id
of the key goes into the hash too (``run_id_from_fingerprint``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import storage

RUN_ID_LENGTH = 24
LABELS_FILE = "labels.npz"


def resolve_spec(recipe: str, overrides: dict[str, Any]):
    """Return the TrainingSpec of ``recipe`` with ``overrides``; raises SpecError if invalid."""
    import attribution

    return attribution.recipes.get(recipe, **overrides)


def run_fingerprint(spec) -> str:
    """Return the fingerprint that ``attribution.train(spec)`` will produce.

    Loads the dataset to hash its content; the loader caches it, so later calls
    for the same dataset are cheap.
    """
    import attribution

    return attribution.run_fingerprint(spec)


def run_id_from_fingerprint(fingerprint: str, owner: Optional[str] = None) -> str:
    """Return the run id of a fingerprint, or of a fingerprint and an API key's owner id.

    Each key gets its own run of a spec, so no key sees or retrains another's run.
    Runs of one spec share the fingerprint and therefore the cached score vectors,
    which deterministic training makes identical.
    """
    if owner is None:
        return fingerprint[:RUN_ID_LENGTH]
    return hashlib.sha256(f"{fingerprint}:{owner}".encode()).hexdigest()[:RUN_ID_LENGTH]


def run_folder(runs_dir: Path, run_id: str) -> Path:
    return Path(runs_dir) / run_id


def write_labels(folder: Path, y_train: np.ndarray, y_test: np.ndarray,
                 texts: tuple[list[str], list[str]] | None = None) -> None:
    """Save the labels and, for language-model runs, the text of every train and test chunk."""
    arrays = {"y_train": y_train, "y_test": y_test}
    if texts is not None:
        # Fixed-width unicode arrays, so reading needs no pickle.
        arrays["text_train"] = np.array(texts[0], dtype=str)
        arrays["text_test"] = np.array(texts[1], dtype=str)
    np.savez(Path(folder) / LABELS_FILE, **arrays)


def read_labels(folder: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Return (y_train, y_test) of a saved run, in a folder or at an fsspec URL, as int64 arrays.

    Shapes are (n_train,) and (n_test,) for classifiers; (n, L) next tokens for
    language models.
    """
    with storage.open_run_file(str(folder), LABELS_FILE) as handle, \
            np.load(handle, allow_pickle=False) as data:
        return data["y_train"], data["y_test"]


def read_texts(folder: Path | str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the (train, test) chunk texts of a language-model run, or None for images."""
    with storage.open_run_file(str(folder), LABELS_FILE) as handle, \
            np.load(handle, allow_pickle=False) as data:
        if "text_train" not in data:
            return None
        return data["text_train"], data["text_test"]
