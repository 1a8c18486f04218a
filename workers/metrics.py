"""Ray metrics of the replay workers, exported through Ray's metrics agent.

The counters are created on first use because ``ray.util.metrics`` needs a
process that is connected to Ray.
"""

from __future__ import annotations

from functools import lru_cache

from ray.util.metrics import Counter


@lru_cache(maxsize=None)
def _counter(name: str, description: str) -> Counter:
    return Counter(name, description=description, tag_keys=("measurement",))


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
