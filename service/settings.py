"""Service settings, read from the environment with pydantic-settings.

``REDIS_URL`` and ``RAY_ADDRESS`` keep their usual names; every other setting
is read from ``MAGIC_<NAME>`` (for example ``MAGIC_SHARD_SIZE=16``). Unsafe or
contradictory values raise ``ValidationError`` when the settings are built, so
the service refuses to start instead of failing on the first request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REDIS_SCHEMES = ("redis", "rediss", "unix")
DAY_SECONDS = 24 * 3600


class Settings(BaseSettings):
    """Configuration of the attribution service and its embedded Redis and Ray."""

    model_config = SettingsConfigDict(env_prefix="MAGIC_", extra="ignore", frozen=True)

    redis_url: Optional[str] = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "MAGIC_REDIS_URL"),
        description="Redis to use; unset starts a private redis-server on a unix socket.",
    )
    ray_address: Optional[str] = Field(
        default=None,
        validation_alias=AliasChoices("RAY_ADDRESS", "MAGIC_RAY_ADDRESS"),
        description="Ray cluster to join; unset starts a local Ray on loopback.",
    )
    storage_dir: Path = Field(
        default=Path("magic-data"),
        description="Folder for training runs and the embedded Redis's append-only file.",
    )
    shard_size: int = Field(
        default=64, ge=1, le=4096,
        description="Maximum test samples per shard handed to one replay worker; a job's "
                    "misses are split evenly over at least MAGIC_REPLAY_WORKERS shards.")
    replay_batch_size: int = Field(
        default=32, ge=1, le=4096,
        description="Test samples carried together in one vmapped reverse pass.",
    )
    replay_workers: int = Field(default=2, ge=1, le=1024,
                                description="Maximum replay workers (Ray actors) per job.")
    max_test_samples: int = Field(default=4096, ge=1,
                                  description="Maximum test samples in one attribution job.")
    max_active_jobs: int = Field(default=8, ge=1,
                                 description="Queued or running jobs before new ones get 503.")
    score_ttl_s: int = Field(default=30 * DAY_SECONDS, ge=0,
                             description="Expiry of cached score vectors in seconds; 0 keeps them.")
    job_ttl_s: int = Field(default=30 * DAY_SECONDS, ge=0,
                           description="Expiry of finished job records in seconds; 0 keeps them.")
    train_timeout_s: float = Field(default=3600.0, gt=0,
                                   description="Time limit of one training task in seconds.")
    shard_timeout_s: float = Field(default=3600.0, gt=0,
                                   description="Time limit of one shard's replay in seconds.")
    ray_call_timeout_s: float = Field(
        default=120.0, gt=0,
        description="Time limit of short Ray calls (actor start-up, run loading) in seconds.",
    )
    evaluation_parallelism: int = Field(
        default=2, ge=1, le=1024,
        description="Retraining tasks of one evaluation job in flight at once.")
    smoothness_probe: bool = Field(
        default=True,
        description="Run the smoothness probe (4 extra training runs) after each training run.")
    ray_num_cpus: int = Field(default=2, ge=1, description="CPUs of the local Ray.")
    ray_object_store_mb: int = Field(default=200, ge=80,
                                     description="Object store of the local Ray in MiB.")
    ray_dashboard: bool = Field(default=False,
                                description="Start the Ray dashboard with the local Ray.")

    @model_validator(mode="after")
    def _check_consistency(self) -> "Settings":
        if self.redis_url is not None:
            scheme = urlsplit(self.redis_url).scheme
            if scheme not in REDIS_SCHEMES:
                raise ValueError(
                    f"REDIS_URL has scheme {scheme!r}; expected one of {list(REDIS_SCHEMES)}, "
                    "for example redis://127.0.0.1:6379/0"
                )
        if self.ray_address is not None and self.redis_url is None:
            raise ValueError(
                "RAY_ADDRESS is set but REDIS_URL is not: workers on other machines cannot "
                "reach the private Redis on this machine's unix socket; set REDIS_URL to a "
                "Redis server that every Ray node can reach"
            )
        if self.ray_address is not None and not self.storage_dir.is_absolute():
            raise ValueError(
                f"MAGIC_STORAGE_DIR={str(self.storage_dir)!r} is relative while RAY_ADDRESS "
                "is set: Ray workers resolve it against their own working folder; set an "
                "absolute path on storage that every Ray node mounts"
            )
        if self.replay_batch_size > self.shard_size:
            raise ValueError(
                f"MAGIC_REPLAY_BATCH_SIZE={self.replay_batch_size} exceeds "
                f"MAGIC_SHARD_SIZE={self.shard_size}: a reverse pass never sees more than one "
                "shard; lower the batch size or raise the shard size"
            )
        return self

    @property
    def runs_dir(self) -> Path:
        return self.storage_dir / "runs"

    @property
    def redis_dir(self) -> Path:
        return self.storage_dir / "redis"


def redact_url(url: Optional[str]) -> Optional[str]:
    """Return ``url`` with any password replaced by ``***``, for logs and /healthz."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
