"""Job records, run records and cached score vectors in Redis.

Score vectors are stored as raw bytes with their dtype and shape beside them,
never pickled, together with the arguments that produced them (run
fingerprint, test index, measurement, engine version). ``get_scores`` compares
the stored arguments with the requested ones and raises ``CacheMismatchError``
on any difference, so a hash collision or a corrupt entry is never served.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .keys import (ACTIVE_EVALUATIONS, ACTIVE_JOBS, LEASE_PREFIX, METRICS, JobStatus,
                   RunStatus, dedupe_key, evaluation_key, evaluation_result_key, job_key, lease_key,
                   retrained_key, run_key, scores_key)

ALLOWED_DTYPES = ("float32", "float64")
# A reservation outlives any job; a stale one is replaced by the next submission.
DEDUPE_TTL_S = 7 * 24 * 3600

# Set the job's fields only while its status is one of ARGV[1] (a JSON list), so a
# cancelled job is never marked succeeded and a finished job never restarts.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local allowed = cjson.decode(ARGV[1])
for _, value in ipairs(allowed) do
  if value == status then
    for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
    return 1
  end
end
return 0
"""


# Renew (ARGV[2] = milliseconds) or, with ARGV[2] = "0", delete the lease KEYS[1]
# only while it holds this process's token ARGV[1].
_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class StoreError(RuntimeError):
    """Base class of errors raised while reading stored records."""


class CacheMismatchError(StoreError):
    """A cached score vector was stored for other arguments, or its bytes are corrupt."""


def encode_vector(vector: np.ndarray) -> dict[str, bytes]:
    """Return the Redis hash fields of a 1-D float array: raw bytes, dtype and shape."""
    array = np.ascontiguousarray(vector)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise TypeError(f"score vector has dtype {array.dtype}; expected one of {ALLOWED_DTYPES}")
    return {
        "data": array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
        "dtype": array.dtype.name.encode(),
        "shape": json.dumps(list(array.shape)).encode(),
    }


def decode_vector(fields: dict[bytes, bytes]) -> np.ndarray:
    """Rebuild the array written by ``encode_vector``; raise CacheMismatchError if corrupt."""
    try:
        dtype = fields[b"dtype"].decode()
        shape = tuple(json.loads(fields[b"shape"]))
        data = fields[b"data"]
    except (KeyError, ValueError) as error:
        raise CacheMismatchError(f"cached score vector is missing a field: {error}") from None
    if dtype not in ALLOWED_DTYPES:
        raise CacheMismatchError(f"cached score vector has dtype {dtype!r}")
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != int(np.prod(shape)):
        raise CacheMismatchError(
            f"cached score vector contains {array.size} values but its shape is {list(shape)}"
        )
    return array.reshape(shape).astype(dtype)


def _retry_policy(total_s: float) -> Retry:
    """Return a redis-py retry policy: backoff from 0.05 s doubling to 2 s, about ``total_s`` long."""
    retries, waited, delay = 0, 0.0, 0.05
    while waited < total_s:
        waited += delay
        retries += 1
        delay = min(2.0, delay * 2)
    return Retry(ExponentialBackoff(cap=2.0, base=0.05), retries)


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in fields.items()}


class Store:
    """Typed access to the service's Redis keys; safe to share between threads."""

    def __init__(self, client: redis.Redis, score_ttl_s: int = 0, job_ttl_s: int = 0) -> None:
        self.client = client
        self.score_ttl_s = score_ttl_s
        self.job_ttl_s = job_ttl_s
        self._transition = client.register_script(_TRANSITION)
        self._lease = client.register_script(_LEASE)

    @classmethod
    def from_url(cls, url: str, score_ttl_s: int = 0, job_ttl_s: int = 0,
                 retry_s: float = 30.0) -> "Store":
        """Connect to ``url``; calls reconnect with backoff for about ``retry_s`` seconds.

        A Redis restart therefore stalls callers instead of failing them, and a
        transaction either runs whole after the reconnect or not at all.
        """
        client = redis.Redis.from_url(url, decode_responses=False, socket_timeout=30,
                                      socket_connect_timeout=10, retry=_retry_policy(retry_s),
                                      retry_on_error=[redis.ConnectionError,
                                                      redis.TimeoutError])
        return cls(client, score_ttl_s=score_ttl_s, job_ttl_s=job_ttl_s)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ runs
    def get_run(self, run_id: str) -> Optional[dict[str, Any]]:
        """Return the run record with JSON fields decoded, or None if unknown."""
        fields = self.client.hgetall(run_key(run_id))
        if not fields:
            return None
        record: dict[str, Any] = _text(fields)
        for name in ("overrides", "spec", "metrics", "smoothness"):
            record[name] = json.loads(record[name]) if record.get(name) else None
        for name in ("n_train", "n_test"):
            record[name] = int(record[name]) if record.get(name) else None
        return record

    def start_run(self, run_id: str, recipe: str, overrides: dict, spec: dict,
                  n_train: int, n_test: int, owner: Optional[str] = None) -> bool:
        """Mark a run as training unless it is training or ready; return True if marked.

        ``owner`` is the owner id of the API key that created it, or None.
        """
        key = run_key(run_id)
        created = self.client.hsetnx(key, "status", RunStatus.TRAINING.value)
        if not created:
            allowed = [RunStatus.FAILED.value]
            fields = ["status", RunStatus.TRAINING.value, "error", ""]
            if not self._transition(keys=[key], args=[json.dumps(allowed), *fields]):
                return False
        now = str(time.time())
        self.client.hset(key, mapping={
            "run_id": run_id, "recipe": recipe, "overrides": json.dumps(overrides),
            "spec": json.dumps(spec), "n_train": n_train, "n_test": n_test,
            "owner": owner or "", "created_at": now, "updated_at": now,
        })
        return True

    def training_run_ids(self) -> list[str]:
        """Return the ids of runs whose status is still training."""
        ids = []
        for key in self.client.scan_iter(match=run_key("*"), count=500):
            if self.client.hget(key, "status") == RunStatus.TRAINING.value.encode():
                ids.append(key.decode()[len(run_key("")):])
        return sorted(ids)

    def finish_run(self, run_id: str, status: RunStatus, **fields: Any) -> None:
        """Set the run's final status and fields (``metrics`` and ``smoothness`` as JSON)."""
        for name in ("metrics", "smoothness"):
            if name in fields:
                fields[name] = json.dumps(fields[name])
        mapping = {"status": status.value, "updated_at": str(time.time()), **fields}
        self.client.hset(run_key(run_id), mapping={k: str(v) for k, v in mapping.items()})

    # ------------------------------------------------------------------ jobs
    def create_job(self, job_id: str, fields: dict[str, Any]) -> None:
        mapping = {"status": JobStatus.QUEUED.value, "done": 0, "cached": 0, "replayed": 0,
                   "error": "", "created_at": time.time(), **fields}
        mapping = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                   for k, v in mapping.items()}
        pipe = self.client.pipeline()
        pipe.hset(job_key(job_id), mapping=mapping)
        pipe.sadd(ACTIVE_JOBS, job_id)
        pipe.hincrby(METRICS, "jobs_submitted", 1)
        pipe.execute()

    def get_job(self, job_id: str) -> Optional[dict[str, Any]]:
        """Return the job record with numbers and lists decoded, or None if unknown."""
        fields = self.client.hgetall(job_key(job_id))
        if not fields:
            return None
        record: dict[str, Any] = _text(fields)
        record["test_indices"] = json.loads(record["test_indices"])
        for name in ("total", "done", "cached", "replayed"):
            record[name] = int(record.get(name) or 0)
        for name in ("created_at", "started_at", "finished_at"):
            record[name] = float(record[name]) if record.get(name) else None
        record["status"] = JobStatus(record["status"])
        return record

    def job_status(self, job_id: str) -> Optional[JobStatus]:
        value = self.client.hget(job_key(job_id), "status")
        return JobStatus(value.decode()) if value else None

    def active_job_count(self) -> int:
        return int(self.client.scard(ACTIVE_JOBS))

    def active_job_ids(self) -> list[str]:
        return sorted(member.decode() for member in self.client.smembers(ACTIVE_JOBS))

    def transition_job(self, job_id: str, allowed: tuple[JobStatus, ...], status: JobStatus,
                       **fields: Any) -> bool:
        """Set ``status`` and ``fields`` only if the current status is in ``allowed``.

        Returns True if the job moved. A finished job leaves the active set and
        gets the configured expiry.
        """
        moved = self._transition_record(job_key(job_id), ACTIVE_JOBS, job_id, allowed, status,
                                        fields)
        if moved and status.finished:
            self._count_finished_job(job_id, status)
        return moved

    def _count_finished_job(self, job_id: str, status: JobStatus) -> None:
        """Add a job that just finished to the counters in ``METRICS``."""
        cached, total = self.client.hmget(job_key(job_id), ["cached", "total"])
        cached, total = int(cached or 0), int(total or 0)
        pipe = self.client.pipeline()
        pipe.hincrby(METRICS, f"jobs_{status.value}", 1)
        pipe.hincrby(METRICS, "cache_hits", cached)
        pipe.hincrby(METRICS, "cache_misses", max(0, total - cached))
        pipe.execute()

    def metric_totals(self) -> dict[str, int]:
        """Return the counters in ``METRICS``: jobs by status, samples replayed, cache hits."""
        return {key.decode(): int(value) for key, value in self.client.hgetall(METRICS).items()}

    def _transition_record(self, key: str, active_set: str, record_id: str,
                           allowed: tuple[JobStatus, ...], status: JobStatus,
                           fields: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> bool:
        args = [json.dumps([s.value for s in allowed]), "status", status.value]
        for name, value in fields.items():
            args.extend([name, str(value)])
        moved = bool(self._transition(keys=[key], args=args))
        if moved and status.finished:
            pipe = self.client.pipeline()
            pipe.srem(active_set, record_id)
            if self.job_ttl_s:
                for name in (key, *extra_keys):
                    pipe.expire(name, self.job_ttl_s)
            pipe.execute()
        return moved

    def create_finished_job(self, job_id: str, fields: dict[str, Any]) -> None:
        """Write a job record that is already final, such as a job served from the cache."""
        mapping = {"error": "", "created_at": time.time(), **fields}
        mapping = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                   for k, v in mapping.items()}
        pipe = self.client.pipeline()
        pipe.hset(job_key(job_id), mapping=mapping)
        if self.job_ttl_s:
            pipe.expire(job_key(job_id), self.job_ttl_s)
        pipe.hincrby(METRICS, "jobs_submitted", 1)
        if "status" in fields:
            pipe.hincrby(METRICS, f"jobs_{JobStatus(fields['status']).value}", 1)
        pipe.hincrby(METRICS, "cache_hits", int(fields.get("cached", 0)))
        pipe.execute()

    def delete_job(self, job_id: str) -> None:
        """Remove a job record that was never handed to a backend, and its count."""
        pipe = self.client.pipeline()
        pipe.delete(job_key(job_id))
        pipe.srem(ACTIVE_JOBS, job_id)
        pipe.hincrby(METRICS, "jobs_submitted", -1)
        pipe.execute()

    def join_or_reserve(self, inputs: dict, job_id: str) -> Optional[str]:
        """Return the id of an active job with the same ``inputs``, or reserve them for ``job_id``.

        Returns None when ``job_id`` got the reservation. A reservation whose job
        has finished is replaced.
        """
        key = dedupe_key(inputs)
        for _ in range(3):
            if self.client.set(key, job_id, nx=True, ex=DEDUPE_TTL_S):
                return None
            current = self.client.get(key)
            if current is None:
                continue
            current = current.decode()
            status = self.job_status(current)
            if status is not None and not status.finished:
                return current
            # The reserved job finished or expired: take the key over unless another
            # submission did so in between.
            pipe = self.client.pipeline()
            pipe.watch(key)
            if pipe.get(key) == current.encode():
                pipe.multi()
                pipe.set(key, job_id, ex=DEDUPE_TTL_S)
                try:
                    pipe.execute()
                    return None
                except redis.WatchError:
                    pass
            pipe.reset()
        raise StoreError("could not reserve the job's inputs; retry the submission")

    # ---------------------------------------------------------------- leases
    def claim(self, kind: str, record_id: str, token: str, lease_s: float) -> bool:
        """Take the lease of a record unless another process has it; return True if taken."""
        return bool(self.client.set(lease_key(kind, record_id), token, nx=True,
                                    px=int(lease_s * 1000)))

    def renew(self, kind: str, record_id: str, token: str, lease_s: float) -> bool:
        """Extend a lease this token holds; return False if it lapsed or another holds it."""
        return bool(self._lease(keys=[lease_key(kind, record_id)],
                                args=[token, int(lease_s * 1000)]))

    def release(self, kind: str, record_id: str, token: str) -> None:
        """Drop a lease this token holds, so that another process can take the record now."""
        self._lease(keys=[lease_key(kind, record_id)], args=[token, "0"])

    def clear_leases(self) -> int:
        """Delete every lease; only safe when no other service process uses this Redis."""
        keys = list(self.client.scan_iter(match=LEASE_PREFIX + "*", count=500))
        return int(self.client.delete(*keys)) if keys else 0

    def add_job_progress(self, job_id: str, done: int = 0, replayed: int = 0) -> None:
        pipe = self.client.pipeline()
        if done:
            pipe.hincrby(job_key(job_id), "done", done)
        if replayed:
            pipe.hincrby(job_key(job_id), "replayed", replayed)
            pipe.hincrby(METRICS, "samples_replayed", replayed)
        pipe.execute()

    def set_job_fields(self, job_id: str, **fields: Any) -> None:
        self.client.hset(job_key(job_id), mapping={k: str(v) for k, v in fields.items()})

    # ---------------------------------------------------------------- scores
    def put_scores(self, arguments: dict, vector: np.ndarray) -> None:
        """Store one test sample's score vector, shape (n_train,), under its cache key."""
        key = scores_key(arguments)
        mapping = {**encode_vector(vector), "arguments": json.dumps(arguments, sort_keys=True),
                   "created_at": str(time.time())}
        pipe = self.client.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        if self.score_ttl_s:
            pipe.expire(key, self.score_ttl_s)
        pipe.execute()

    def get_scores(self, arguments: dict) -> Optional[np.ndarray]:
        """Return the cached vector for ``arguments``, or None if absent or expired.

        Raises CacheMismatchError if the entry was stored for other arguments or
        its bytes do not match its dtype and shape.
        """
        fields = self.client.hgetall(scores_key(arguments))
        if not fields:
            return None
        stored = json.loads(fields.get(b"arguments", b"null"))
        if stored != arguments:
            raise CacheMismatchError(
                f"cache entry {scores_key(arguments)} was stored for {stored}, "
                f"not for the requested {arguments}; delete the key to recompute it"
            )
        return decode_vector(fields)

    def missing_scores(self, arguments: list[dict]) -> list[int]:
        """Return the positions in ``arguments`` whose score vector is not cached."""
        pipe = self.client.pipeline()
        for item in arguments:
            pipe.exists(scores_key(item))
        return [q for q, present in enumerate(pipe.execute()) if not present]

    # ----------------------------------------------------------- evaluations
    def create_evaluation(self, evaluation_id: str, fields: dict[str, Any]) -> None:
        mapping = {"status": JobStatus.QUEUED.value, "done": 0, "retrained": 0, "reused": 0,
                   "error": "", "created_at": time.time(), **fields}
        mapping = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                   for k, v in mapping.items()}
        pipe = self.client.pipeline()
        pipe.hset(evaluation_key(evaluation_id), mapping=mapping)
        pipe.sadd(ACTIVE_EVALUATIONS, evaluation_id)
        pipe.execute()

    def get_evaluation(self, evaluation_id: str) -> Optional[dict[str, Any]]:
        """Return the evaluation record with numbers and lists decoded, or None if unknown."""
        fields = self.client.hgetall(evaluation_key(evaluation_id))
        if not fields:
            return None
        record: dict[str, Any] = _text(fields)
        for name in ("test_indices", "fractions", "methods", "options"):
            record[name] = json.loads(record[name]) if record.get(name) else None
        for name in ("total", "done", "retrained", "reused", "num_subsets", "seed"):
            record[name] = int(record.get(name) or 0)
        for name in ("created_at", "started_at", "finished_at"):
            record[name] = float(record[name]) if record.get(name) else None
        record["status"] = JobStatus(record["status"])
        return record

    def evaluation_status(self, evaluation_id: str) -> Optional[JobStatus]:
        value = self.client.hget(evaluation_key(evaluation_id), "status")
        return JobStatus(value.decode()) if value else None

    def active_evaluation_ids(self) -> list[str]:
        return sorted(member.decode() for member in self.client.smembers(ACTIVE_EVALUATIONS))

    def active_evaluation_count(self) -> int:
        return int(self.client.scard(ACTIVE_EVALUATIONS))

    def transition_evaluation(self, evaluation_id: str, allowed: tuple[JobStatus, ...],
                              status: JobStatus, **fields: Any) -> bool:
        """Like ``transition_job`` for an evaluation record (its result expires with it)."""
        return self._transition_record(evaluation_key(evaluation_id), ACTIVE_EVALUATIONS,
                                       evaluation_id, allowed, status, fields,
                                       extra_keys=(evaluation_result_key(evaluation_id),))

    def add_evaluation_progress(self, evaluation_id: str, done: int = 0, retrained: int = 0,
                                reused: int = 0) -> None:
        pipe = self.client.pipeline()
        for name, value in (("done", done), ("retrained", retrained), ("reused", reused)):
            if value:
                pipe.hincrby(evaluation_key(evaluation_id), name, value)
        pipe.execute()

    def put_evaluation_result(self, evaluation_id: str, result: dict) -> None:
        self.client.set(evaluation_result_key(evaluation_id), json.dumps(result))

    def get_evaluation_result(self, evaluation_id: str) -> Optional[dict]:
        raw = self.client.get(evaluation_result_key(evaluation_id))
        return None if raw is None else json.loads(raw)

    # ---------------------------------------------------- retrained measurements
    def put_retrained(self, arguments: dict, vector: np.ndarray) -> None:
        """Store one retrained row of measurements, shape (n_test,); it never expires."""
        key = retrained_key(arguments)
        mapping = {**encode_vector(vector), "arguments": json.dumps(arguments, sort_keys=True),
                   "created_at": str(time.time())}
        pipe = self.client.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.execute()

    def get_retrained(self, arguments: dict) -> Optional[np.ndarray]:
        """Return the stored row for ``arguments`` or None; raise CacheMismatchError if corrupt."""
        fields = self.client.hgetall(retrained_key(arguments))
        if not fields:
            return None
        stored = json.loads(fields.get(b"arguments", b"null"))
        if stored != arguments:
            raise CacheMismatchError(
                f"retrained entry {retrained_key(arguments)} was stored for {stored}, not for "
                f"the requested {arguments}; delete the key to retrain it"
            )
        return decode_vector(fields)
