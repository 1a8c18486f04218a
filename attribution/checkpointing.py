"""Policies that hand the reverse pass the states s_{T-1}, ..., s_0 in reverse order.

- ``keep_all``: replay the whole run once and keep every state (memory T states,
  T forward steps).
- ``interval``: keep every k-th state, then recompute one segment at a time
  (memory about T/k + k states, about 2T forward steps). Stored training
  checkpoints are used as segment starts when the spacing matches.
- ``replay``: REPLAY's lazy k-ary tree (default k = ceil(T^(1/3))): store k segment starts, descend into the
  last segment, recurse, and free each segment once it is done (memory about
  k * log_k(T) states, about T * (1 + log_k T) forward steps).

All three produce bit-identical states because they call the same
``Trainer.advance`` as training does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

from .errors import SpecError
from .optim import State
from .training import Trainer

POLICIES = ("keep_all", "interval", "replay")


@dataclass
class ReplayStats:
    """Counters of one reverse sweep: forward steps replayed and peak states held."""

    forward_steps: int = 0
    peak_states: int = 0
    _states_in_memory: int = field(default=0, repr=False)

    def hold(self, count: int = 1) -> None:
        self._states_in_memory += count
        self.peak_states = max(self.peak_states, self._states_in_memory)

    def release(self, count: int = 1) -> None:
        self._states_in_memory -= count


def default_branching(policy: str, num_steps: int) -> int:
    """sqrt(T) for 'interval'; for 'replay' the smallest k with about two tree levels.

    With k = ceil(T^(1/3)) REPLAY keeps about 3k states and replays about 2.7 T
    forward steps (T = 400 gives k = 8).
    """
    if policy == "interval":
        return max(1, round(math.sqrt(num_steps)))
    return max(2, math.ceil(num_steps ** (1 / 3) - 1e-9))


def reverse_states(trainer: Trainer, initial: State, num_steps: int, policy: str,
                   k: int | None, stats: ReplayStats,
                   stored: dict[int, State] | None = None) -> Iterator[tuple[int, State]]:
    """Yield (t, s_t) for t = num_steps - 1 down to 0, starting from ``initial`` = s_0."""
    if policy not in POLICIES:
        raise SpecError(f"checkpoint policy {policy!r} is not supported; expected one of "
                        f"{list(POLICIES)}")
    k = default_branching(policy, num_steps) if k is None else k
    if not isinstance(k, int) or k < 1 or (policy == "replay" and k < 2):
        raise SpecError(f"checkpoint branching k={k!r} must be an integer >= "
                        f"{2 if policy == 'replay' else 1}")
    if policy == "keep_all":
        return _segment_reverse(trainer, initial, 0, num_steps, stats)
    if policy == "interval":
        return _interval_reverse(trainer, initial, num_steps, k, stats, stored or {})
    return _tree_reverse(trainer, initial, 0, num_steps, k, stats)


def _advance(trainer: Trainer, state: State, t: int, stats: ReplayStats) -> State:
    stats.forward_steps += 1
    return trainer.advance(state, t)


def _segment_reverse(trainer: Trainer, start_state: State, start: int, end: int,
                     stats: ReplayStats) -> Iterator[tuple[int, State]]:
    """Recompute s_start .. s_{end-1}, keep them all, and yield them backwards."""
    states = [start_state]
    stats.hold()
    for t in range(start, end - 1):
        states.append(_advance(trainer, states[-1], t, stats))
        stats.hold()
    for t in range(end - 1, start - 1, -1):
        yield t, states.pop()
        stats.release()


def _interval_reverse(trainer: Trainer, initial: State, num_steps: int, k: int,
                      stats: ReplayStats, stored: dict[int, State]
                      ) -> Iterator[tuple[int, State]]:
    starts = list(range(0, num_steps, k))
    anchors: dict[int, State] = {}
    state = initial
    for start in starts:
        state = stored.get(start, state)
        anchors[start] = state
        stats.hold()
        following = start + k
        if following < num_steps and following not in stored:
            for t in range(start, following):
                state = _advance(trainer, state, t, stats)
    for start in reversed(starts):
        end = min(start + k, num_steps)
        yield from _segment_reverse(trainer, anchors.pop(start), start, end, stats)
        stats.release()


def _tree_reverse(trainer: Trainer, start_state: State, start: int, end: int, k: int,
                  stats: ReplayStats) -> Iterator[tuple[int, State]]:
    length = end - start
    if length <= k:
        yield from _segment_reverse(trainer, start_state, start, end, stats)
        return
    bounds = [start + (length * j) // k for j in range(k + 1)]
    segment_starts = [start_state]
    stats.hold()
    state = start_state
    for j in range(1, k):
        for t in range(bounds[j - 1], bounds[j]):
            state = _advance(trainer, state, t, stats)
        segment_starts.append(state)
        stats.hold()
    for j in range(k - 1, -1, -1):
        first = segment_starts.pop()
        yield from _tree_reverse(trainer, first, bounds[j], bounds[j + 1], k, stats)
        stats.release()
