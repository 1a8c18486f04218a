"""Service settings, read from the environment with pydantic-settings.

``REDIS_URL`` and ``RAY_ADDRESS`` keep their usual names; every other setting
is read from ``MAGIC_<NAME>`` (for example ``MAGIC_SHARD_SIZE=16``). Unsafe or
contradictory values raise ``ValidationError`` when the settings are built, so
the service refuses to start instead of failing on the first request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REDIS_SCHEMES = ("redis", "rediss", "unix")
DAY_SECONDS = 24 * 3600


class Settings(BaseSettings):
    """Configuration of the attribution service and its embedded Redis and Ray."""

    # Errors leave out the rejected values, because MAGIC_API_KEYS may contain a plaintext
    # key by mistake and REDIS_URL a password.
    model_config = SettingsConfigDict(env_prefix="MAGIC_", extra="ignore", frozen=True,
                                      hide_input_in_errors=True)

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
    max_score_values: int = Field(
        default=2**25, ge=1,
        description="Maximum values in the score matrix of one request (test samples times "
                    "training examples); a larger job, evaluation or prediction gets 422.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024,
                                description="Maximum request body in bytes; a larger one gets 413.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="SHA-256 hex digests of the accepted API keys, as a JSON list or "
                    "separated by commas (`magic-attr hash-key` prints one); empty turns "
                    "authentication off.")
    allow_unauthenticated_public: bool = Field(
        default=False,
        description="Let `magic-attr serve` listen on a non-loopback address with no "
                    "MAGIC_API_KEYS, so anyone who reaches it can use the API.")
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
    worker_start_timeout_s: float = Field(
        default=300.0, gt=0,
        description="Time limit for replay workers to start and load their run in seconds "
                    "(a new process imports torch, so a busy node needs a while).")
    shard_retries: int = Field(
        default=2, ge=0, le=100,
        description="Times a shard is handed to a fresh replay worker after its worker "
                    "process died; samples it already cached are not computed again.")
    replay_worker_gpus: float = Field(
        default=1.0, gt=0, le=8,
        description="GPUs each replay worker requests when the cluster has GPUs (a "
                    "fraction packs several workers on one GPU); without GPUs each takes 1 CPU.")
    worker_idle_s: float = Field(
        default=60.0, ge=0,
        description="Seconds a warm replay worker waits for the next job on its run before "
                    "it stops and frees its CPU or GPU; 0 stops workers after every job.")
    job_lease_s: float = Field(
        default=30.0, ge=2,
        description="Seconds of the lease a service process takes on each job, evaluation "
                    "and training run it works on, renewed while it runs. The next service "
                    "process to sweep Redis takes over a record whose lease expired.")
    redis_retry_s: float = Field(
        default=30.0, ge=0,
        description="Seconds of reconnecting with backoff before a Redis call fails.")
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
    runs_url: Optional[str] = Field(
        default=None,
        description="fsspec URL for training runs (s3://bucket/runs, gs://..., file:///shared/"
                    "runs); unset keeps them in MAGIC_STORAGE_DIR/runs. Workers copy each run "
                    "once into MAGIC_RUN_CACHE_DIR.")
    run_cache_dir: Optional[Path] = Field(
        default=None,
        description="Local folder for the read-only copies of runs stored at MAGIC_RUNS_URL; "
                    "read from the environment of each Ray node (default: a folder in the "
                    "temporary directory).")
    train_task_cpus: float = Field(default=1.0, gt=0, le=1024,
                                   description="CPUs that Ray reserves for one training task.")
    replay_worker_cpus: float = Field(
        default=1.0, gt=0, le=1024,
        description="CPUs that Ray reserves for one replay worker, beside its "
                    "MAGIC_REPLAY_WORKER_GPUS when the cluster has GPUs.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_key_hashes(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError("MAGIC_API_KEYS starts with '[' but is not a JSON list; "
                                     'write ["<hash>", ...] or separate the hashes with '
                                     "commas") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_key_hashes(cls, hashes: tuple[str, ...]) -> tuple[str, ...]:
        from .auth import is_key_hash

        for position, value in enumerate(hashes):
            # The message leaves the value out: it may be a plaintext key.
            if not is_key_hash(value):
                raise ValueError(f"MAGIC_API_KEYS entry {position} is not a SHA-256 hex digest "
                                 "(64 hex digits); store the hash of each key, never the key: "
                                 "`magic-attr hash-key` prints it")
        return tuple(value.lower() for value in hashes)

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
        if self.runs_url is not None:
            from .storage import check_url

            check_url(self.runs_url)
            if self.ray_address is not None and self.runs_url.startswith("memory://"):
                raise ValueError(
                    "MAGIC_RUNS_URL is a memory:// URL while RAY_ADDRESS is set: an in-memory "
                    "file system is private to one process; use s3://, gs:// or file://")
        elif self.ray_address is not None and not self.storage_dir.is_absolute():
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
