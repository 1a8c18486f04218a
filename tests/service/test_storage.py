"""Runs' storage on local paths and fsspec URLs (memory:// and file:// here)."""

import uuid

import fsspec
import pytest
from pydantic import ValidationError

import attribution
from service import runs, storage
from service.settings import Settings

TINY = {"n_train": 200, "n_test": 50, "epochs": 2, "hidden": [16]}


@pytest.fixture
def memory_url():
    """A fresh folder on fsspec's in-memory file system, removed afterwards."""
    url = f"memory://magic-test-{uuid.uuid4().hex[:8]}/runs"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def make_folder(parent, files=None):
    """Write a fake run folder with ``files`` ({relative path: text}) and return it."""
    files = files or {"spec.json": "{}", "checkpoints/0.pt": "state"}
    folder = parent / f"staged-{uuid.uuid4().hex[:6]}"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def tiny_run():
    return attribution.train(attribution.recipes.get("digits-mlp", **TINY))


def test_run_location_local_and_url(tmp_path):
    local = Settings(storage_dir=tmp_path)
    assert storage.run_location(local, "abc") == str((tmp_path / "runs" / "abc").resolve())
    remote = Settings(storage_dir=tmp_path, runs_url="memory://bucket/runs/")
    assert storage.run_location(remote, "abc") == "memory://bucket/runs/abc"


def test_local_path_is_used_in_place(tmp_path):
    staged = make_folder(tmp_path)
    target = tmp_path / "runs" / "abc"
    storage.publish_run(staged, str(target), "fingerprint-1")
    assert not staged.exists()
    assert (target / "checkpoints" / "0.pt").read_text() == "state"
    assert not (target / storage.COMPLETE_MARKER).exists()
    assert storage.run_exists(str(target))
    assert storage.local_run_folder(str(target), "fingerprint-1") == target


def test_local_publish_replaces_older_run(tmp_path):
    target = tmp_path / "runs" / "abc"
    storage.publish_run(make_folder(tmp_path, {"old.txt": "old"}), str(target), "fp")
    storage.publish_run(make_folder(tmp_path, {"new.txt": "new"}), str(target), "fp")
    assert sorted(path.name for path in target.iterdir()) == ["new.txt"]


def test_staging_folder_is_sibling_for_local_paths(tmp_path):
    target = tmp_path / "runs" / "abc"
    staged = storage.staging_folder(str(target))
    assert staged.parent == target.parent
    assert staged.name.startswith("abc.partial-")


def test_memory_url_round_trip(tmp_path, memory_url):
    location = f"{memory_url}/abc"
    assert not storage.run_exists(location)
    staged = make_folder(tmp_path)
    storage.publish_run(staged, location, "fingerprint-1")
    assert not staged.exists()
    assert storage.run_exists(location)

    copy = storage.local_run_folder(location, "fingerprint-1", cache_dir=tmp_path / "cache")
    assert copy == tmp_path / "cache" / "fingerprint-1"
    assert (copy / "checkpoints" / "0.pt").read_text() == "state"
    assert (copy / "spec.json").read_text() == "{}"
    assert (copy / "spec.json").stat().st_mode & 0o222 == 0
    with storage.open_run_file(location, "spec.json") as handle:
        assert handle.read() == b"{}"


def test_memory_url_copy_is_reused(tmp_path, memory_url):
    location = f"{memory_url}/abc"
    storage.publish_run(make_folder(tmp_path), location, "fingerprint-1")
    first = storage.local_run_folder(location, cache_dir=tmp_path / "cache")
    fs, root = fsspec.core.url_to_fs(location)
    fs.rm(f"{root}/spec.json")
    second = storage.local_run_folder(location, cache_dir=tmp_path / "cache")
    assert second == first
    assert (second / "spec.json").exists()
    leftovers = [path.name for path in (tmp_path / "cache").iterdir()]
    assert leftovers == ["fingerprint-1"]


def test_memory_url_written_once(tmp_path, memory_url):
    location = f"{memory_url}/abc"
    storage.publish_run(make_folder(tmp_path, {"a.txt": "first"}), location, "fp")
    storage.publish_run(make_folder(tmp_path, {"a.txt": "second"}), location, "fp")
    with storage.open_run_file(location, "a.txt") as handle:
        assert handle.read() == b"first"


def test_memory_url_new_fingerprint_replaces_run(tmp_path, memory_url):
    location = f"{memory_url}/abc"
    storage.publish_run(make_folder(tmp_path, {"old.txt": "x"}), location, "fp-old")
    storage.publish_run(make_folder(tmp_path, {"new.txt": "y"}), location, "fp-new")
    fs, root = fsspec.core.url_to_fs(location)
    names = sorted(path.rsplit("/", 1)[-1] for path in fs.find(root))
    assert names == [storage.COMPLETE_MARKER, "new.txt"]


def test_incomplete_run_is_rejected(tmp_path, memory_url):
    location = f"{memory_url}/abc"
    fs, root = fsspec.core.url_to_fs(location)
    fs.pipe_file(f"{root}/spec.json", b"{}")
    assert not storage.run_exists(location)
    with pytest.raises(storage.RunStorageError, match="no finished run"):
        storage.local_run_folder(location, cache_dir=tmp_path / "cache")


def test_fingerprint_mismatch_is_rejected(tmp_path, memory_url):
    location = f"{memory_url}/abc"
    storage.publish_run(make_folder(tmp_path), location, "fingerprint-1")
    with pytest.raises(storage.RunStorageError, match="expected fingerprint-2"):
        storage.local_run_folder(location, "fingerprint-2", cache_dir=tmp_path / "cache")


def test_file_url_round_trip(tmp_path):
    location = f"file://{tmp_path}/remote/runs/abc"
    storage.publish_run(make_folder(tmp_path), location, "fingerprint-1")
    assert (tmp_path / "remote" / "runs" / "abc" / storage.COMPLETE_MARKER).read_text() == (
        "fingerprint-1")
    copy = storage.local_run_folder(location, "fingerprint-1", cache_dir=tmp_path / "cache")
    assert (copy / "checkpoints" / "0.pt").read_text() == "state"


def test_training_run_through_memory_url(tmp_path, memory_url, tiny_run):
    location = f"{memory_url}/{tiny_run.fingerprint[:24]}"
    staged = storage.staging_folder(location)
    tiny_run.save(staged)
    runs.write_labels(staged, y_train=tiny_run.trainer.y_train.numpy(),
                      y_test=tiny_run.trainer.y_test.numpy())
    storage.publish_run(staged, location, tiny_run.fingerprint)

    y_train, y_test = runs.read_labels(location)
    assert y_train.shape == (200,)
    assert y_test.shape == (50,)
    copy = storage.local_run_folder(location, tiny_run.fingerprint, cache_dir=tmp_path / "cache")
    loaded = attribution.TrainingRun.load(copy)
    assert loaded.fingerprint == tiny_run.fingerprint
    assert loaded.measure([0, 1]).tolist() == tiny_run.measure([0, 1]).tolist()


def test_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_DIR_VARIABLE, str(tmp_path))
    assert storage.default_cache_dir() == tmp_path
    monkeypatch.delenv(storage.CACHE_DIR_VARIABLE)
    assert storage.default_cache_dir().name == "magic-attribution-runs"


@pytest.mark.parametrize("url, message", [
    ("nosuchscheme://bucket/runs", "fsspec does not know"),
])
def test_settings_reject_unknown_scheme(url, message):
    with pytest.raises(ValidationError, match=message):
        Settings(runs_url=url)


def test_settings_reject_memory_url_on_cluster():
    with pytest.raises(ValidationError, match="private to one process"):
        Settings(runs_url="memory://runs", ray_address="127.0.0.1:6379",
                 redis_url="redis://127.0.0.1:6379/0", storage_dir="/data")


def test_settings_allow_relative_storage_with_runs_url():
    settings = Settings(runs_url="file:///shared/runs", ray_address="127.0.0.1:6379",
                        redis_url="redis://127.0.0.1:6379/0", storage_dir="relative")
    assert settings.runs_url == "file:///shared/runs"


def test_settings_resource_fields():
    settings = Settings(train_task_cpus=4, replay_worker_cpus=2, replay_worker_gpus=0.5)
    assert settings.train_task_cpus == 4
    assert settings.replay_worker_cpus == 2
    assert settings.replay_worker_gpus == 0.5
    with pytest.raises(ValidationError):
        Settings(train_task_cpus=0)
