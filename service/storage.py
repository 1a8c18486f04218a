"""Runs' storage on a local folder or on any fsspec URL (s3://, gs://, file://, memory://).

A plain path (no ``scheme://``) is used in place, as a folder that every
process reads directly. A URL is written once per run: the trainer saves the
run to a local folder, uploads its files, and writes ``COMPLETE_MARKER`` (the
run's fingerprint) last, so a reader never takes a half-uploaded run for a
finished one. Each machine that needs the run downloads it once into a local
cache folder named after the run fingerprint and loads it from there. The
copy's files are made read-only.

Credentials and options of remote file systems come from their usual sources
(for S3, the ``AWS_*`` variables or the instance role), and the matching
fsspec implementation (s3fs, gcsfs) must be installed on every node.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import stat
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, Optional

import fsspec

if TYPE_CHECKING:
    from .settings import Settings

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "_COMPLETE"
CACHE_DIR_VARIABLE = "MAGIC_RUN_CACHE_DIR"


class RunStorageError(RuntimeError):
    """A run is missing or incomplete in its storage, or differs from the expected one."""


def is_url(location: str | Path) -> bool:
    """Return True if ``location`` names an fsspec URL rather than a local path."""
    return "://" in str(location)


def check_url(url: str) -> None:
    """Raise ValueError if fsspec has no usable implementation for the scheme of ``url``."""
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        raise ValueError(f"storage URL {url!r} needs a package that is not installed: {error}")
    except ValueError:
        raise ValueError(f"storage URL {url!r} has scheme {protocol!r}, which fsspec does not "
                         "know; use s3://, gs://, file:// or another fsspec scheme") from None


def run_location(settings: "Settings", run_id: str) -> str:
    """Return where run ``run_id`` is stored: under ``MAGIC_RUNS_URL``, else an absolute path."""
    if settings.runs_url:
        return f"{settings.runs_url.rstrip('/')}/{run_id}"
    return str((settings.runs_dir / run_id).resolve())


def run_exists(location: str) -> bool:
    """Return True if a finished run is stored at ``location``."""
    if not is_url(location):
        return Path(location).is_dir()
    fs, root = fsspec.core.url_to_fs(location)
    return fs.exists(posixpath.join(root, COMPLETE_MARKER))


def staging_folder(location: str) -> Path:
    """Return a fresh local folder to save a run in before ``publish_run`` moves it to ``location``.

    For a local path it is a sibling of the target, so the final rename stays on
    one file system.
    """
    if is_url(location):
        return Path(tempfile.mkdtemp(prefix="magic-run-"))
    target = Path(location)
    return target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")


def publish_run(folder: Path, location: str, fingerprint: str) -> None:
    """Move the finished run in the local ``folder`` to ``location``; ``folder`` is consumed.

    For a local path the folder is renamed into place, replacing an older run.
    For a URL the files are uploaded and the marker written last, unless a
    complete run with the same fingerprint is already there (the upload is
    skipped then, because training is deterministic).
    """
    folder = Path(folder)
    if not is_url(location):
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
        return

    fs, root = fsspec.core.url_to_fs(location)
    marker = posixpath.join(root, COMPLETE_MARKER)
    try:
        if fs.exists(marker) and fs.cat_file(marker).decode() == fingerprint:
            logger.info("run %s is already stored at %s; upload skipped", fingerprint[:16],
                        location)
            return
        if fs.exists(root):
            fs.rm(root, recursive=True)
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                remote = posixpath.join(root, path.relative_to(folder).as_posix())
                fs.makedirs(posixpath.dirname(remote), exist_ok=True)
                fs.put_file(str(path), remote)
        fs.pipe_file(marker, fingerprint.encode())
        logger.info("run %s uploaded to %s", fingerprint[:16], location)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def default_cache_dir() -> Path:
    """Return the local folder for copies of remote runs: ``MAGIC_RUN_CACHE_DIR`` or a temp folder."""
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "magic-attribution-runs"


def local_run_folder(location: str, fingerprint: Optional[str] = None,
                     cache_dir: Optional[Path] = None) -> Path:
    """Return a local folder that contains the run stored at ``location``.

    A local path is returned unchanged. A URL's run is downloaded once per
    ``cache_dir`` (default: ``default_cache_dir()``) into a folder named after
    its fingerprint, and later calls reuse it. Raises RunStorageError if the run
    is missing or incomplete, or if its fingerprint differs from ``fingerprint``.
    """
    if not is_url(location):
        return Path(location)

    fs, root = fsspec.core.url_to_fs(location)
    marker = posixpath.join(root, COMPLETE_MARKER)
    try:
        stored = fs.cat_file(marker).decode()
    except FileNotFoundError:
        raise RunStorageError(f"no finished run at {location} (its {COMPLETE_MARKER} file is "
                              "missing); train the run again") from None
    if fingerprint is not None and stored != fingerprint:
        raise RunStorageError(f"the run at {location} has fingerprint {stored[:16]}, expected "
                              f"{fingerprint[:16]}; train the run again")

    cache = Path(cache_dir or default_cache_dir()) / stored
    if (cache / COMPLETE_MARKER).is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        _download(fs, root, partial)
        (partial / COMPLETE_MARKER).write_text(stored)
        _make_read_only(partial)
        try:
            partial.rename(cache)
        except OSError:
            # Another process on this machine finished the same copy first.
            if not (cache / COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("run %s copied from %s to %s", stored[:16], location, cache)
    return cache


@contextmanager
def open_run_file(location: str, name: str) -> Iterator[IO[bytes]]:
    """Open one file of the run at ``location`` for binary reading, without copying the run."""
    if not is_url(location):
        with open(Path(location) / name, "rb") as handle:
            yield handle
        return
    with fsspec.open(f"{location.rstrip('/')}/{name}", "rb") as handle:
        yield handle


def _download(fs, root: str, folder: Path) -> None:
    for remote in fs.find(root):
        relative = posixpath.relpath(remote, root)
        if relative == COMPLETE_MARKER:
            continue
        local = folder / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))


def _make_read_only(folder: Path) -> None:
    read_only = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(read_only)
