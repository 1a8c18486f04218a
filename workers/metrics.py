"""Ray metrics of the replay workers, exported through Ray's metrics agent.

The counters are created on first use because ``ray.util.metrics`` needs a
process that is connected to Ray.
"""

from __future__ import annotations

from functools import lru_cache

from ray.util.metrics import Counter, Gauge, Histogram

# Bucket bounds of the replay step time in seconds: 1 ms to 10 s, about 3 per decade.
STEP_SECONDS_BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                           5.0, 10.0]


@lru_cache(maxsize=None)
def _counter(name: str, description: str, tag_keys: tuple[str, ...] = ("measurement",)) -> Counter:
    return Counter(name, description=description, tag_keys=tag_keys)


def record_samples_done(count: int, measurement: str) -> None:
    _counter("magic_samples_done", "Test samples whose scores a replay worker computed").inc(
        count, tags={"measurement": measurement})


def record_cache_hits(count: int, measurement: str) -> None:
    if count:
        _counter("magic_cache_hits", "Test samples answered from the Redis cache").inc(
            count, tags={"measurement": measurement})


def record_replay_seconds(seconds: float, measurement: str) -> None:
    _counter("magic_replay_seconds", "Wall seconds spent in reverse passes").inc(
        seconds, tags={"measurement": measurement})


def record_job_failed() -> None:
    _counter("magic_jobs_failed", "Attribution jobs that ended failed", ()).inc(1)


def record_worker_lost() -> None:
    _counter("magic_replay_workers_lost",
             "Replay workers that died in the middle of a shard (the shard is retried)",
             ()).inc(1)


@lru_cache(maxsize=None)
def _gauge(name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
    return Gauge(name, description=description, tag_keys=tag_keys)


@lru_cache(maxsize=None)
def _histogram(name: str, description: str) -> Histogram:
    return Histogram(name, description=description, boundaries=STEP_SECONDS_BOUNDARIES,
                     tag_keys=("measurement",))


def record_batch_timing(samples: int, seconds: float, num_steps: int, measurement: str) -> None:
    """Record one vmapped reverse pass over ``samples`` test samples that took ``seconds``.

    Sets this worker's samples-per-second gauge and adds the pass's time per
    training step (``seconds / num_steps``) to the replay step time histogram.
    """
    if seconds <= 0 or num_steps <= 0:
        return
    _gauge("magic_replay_samples_per_second",
           "Test samples per second of the last reverse pass of each replay worker",
           ("measurement",)).set(samples / seconds, tags={"measurement": measurement})
    _histogram("magic_replay_step_seconds",
               "Seconds per training step of one vmapped reverse pass over a batch").observe(
        seconds / num_steps, tags={"measurement": measurement})


def record_queue_depth(depth: int) -> None:
    """Set the number of attribution jobs waiting in this service process's queue."""
    _gauge("magic_job_queue_depth", "Attribution jobs queued in the service process, not yet "
           "running", ()).set(depth)
