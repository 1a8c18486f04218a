from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, redact_url


def test_defaults_are_valid(monkeypatch):
    for name in ("REDIS_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.redis_url is None
    assert settings.ray_address is None
    assert settings.runs_dir == Path("magic-data") / "runs"


def test_environment_names(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("MAGIC_SHARD_SIZE", "16")
    monkeypatch.setenv("MAGIC_REPLAY_BATCH_SIZE", "8")
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.shard_size == 16
    assert settings.replay_batch_size == 8


def test_ray_address_without_redis_rejected():
    with pytest.raises(ValidationError, match="REDIS_URL"):
        Settings(ray_address="ray://10.0.0.1:10001", redis_url=None,
                 storage_dir=Path("/shared/magic"))


def test_relative_storage_with_cluster_rejected():
    with pytest.raises(ValidationError, match="absolute"):
        Settings(ray_address="ray://10.0.0.1:10001", redis_url="redis://10.0.0.2:6379/0",
                 storage_dir=Path("magic-data"))


def test_batch_larger_than_shard_rejected():
    with pytest.raises(ValidationError, match="MAGIC_REPLAY_BATCH_SIZE"):
        Settings(shard_size=4, replay_batch_size=8)


def test_unknown_redis_scheme_rejected():
    with pytest.raises(ValidationError, match="scheme"):
        Settings(redis_url="http://127.0.0.1:6379")


@pytest.mark.parametrize("field, value", [
    ("shard_size", 0), ("replay_workers", 0), ("score_ttl_s", -1), ("train_timeout_s", 0),
    ("ray_object_store_mb", 10),
])
def test_out_of_range_values_rejected(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_redact_url_hides_password():
    assert redact_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("unix:///tmp/redis.sock") == "unix:///tmp/redis.sock"
    assert redact_url(None) is None
