"""Evaluation records and stored retrained measurements in a real Redis."""

import numpy as np
import pytest

from service.keys import JobStatus, retrained_arguments, retrained_key
from service.store import CacheMismatchError


def _arguments(subset=0):
    return retrained_arguments("f" * 64, "loss", 0.05, 0, subset, "abc")


def test_retrained_row_round_trip(store):
    row = np.linspace(0, 1, 7)
    store.put_retrained(_arguments(), row)
    np.testing.assert_array_equal(store.get_retrained(_arguments()), row)
    assert store.get_retrained(_arguments(subset=1)) is None


def test_retrained_row_mismatch_raises(store):
    store.put_retrained(_arguments(), np.zeros(3))
    store.client.hset(retrained_key(_arguments()), "arguments", '{"other": 1}')
    with pytest.raises(CacheMismatchError, match="retrain it"):
        store.get_retrained(_arguments())


def test_evaluation_lifecycle(store):
    store.create_evaluation("e1", {"evaluation_id": "e1", "run_id": "r", "test_indices": [1, 2],
                                   "fractions": [0.05], "methods": ["magic"], "num_subsets": 4,
                                   "seed": 0, "measurement": "loss", "options": {}, "total": 5})
    assert store.active_evaluation_ids() == ["e1"]
    record = store.get_evaluation("e1")
    assert record["status"] == JobStatus.QUEUED
    assert record["fractions"] == [0.05]

    assert store.transition_evaluation("e1", (JobStatus.QUEUED,), JobStatus.RUNNING)
    store.add_evaluation_progress("e1", done=2, retrained=1, reused=1)
    assert store.transition_evaluation("e1", (JobStatus.RUNNING,), JobStatus.CANCELLED)
    assert not store.transition_evaluation("e1", (JobStatus.RUNNING,), JobStatus.SUCCEEDED)
    record = store.get_evaluation("e1")
    assert record["status"] == JobStatus.CANCELLED
    assert (record["done"], record["retrained"], record["reused"]) == (2, 1, 1)
    assert store.active_evaluation_ids() == []
    assert store.client.ttl("magic:evaluation:e1") > 0
