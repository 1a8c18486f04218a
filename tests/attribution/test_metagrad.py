"""Metagradient numerics in float64 against independent references."""

import pytest
import torch

import attribution
from attribution.checkpointing import ReplayStats, reverse_states

from .conftest import EXACT_RTOL, FD_RTOL, OPTIMIZER_CASES, relative_error, tiny_spec

TEST_SAMPLES = [0, 7, 13]


def central_difference(spec, run, example: int, measurement: str, h: float) -> torch.Tensor:
    """(phi(w + h e_i) - phi(w - h e_i)) / 2h by retraining twice, shape (k,)."""
    weights = torch.ones(spec.n_train, dtype=torch.float64)
    weights[example] += h
    plus = attribution.train(spec, data_weights=weights).measure(TEST_SAMPLES, measurement)
    weights[example] -= 2 * h
    minus = attribution.train(spec, data_weights=weights).measure(TEST_SAMPLES, measurement)
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CASES))
def test_scores_match_finite_differences(tiny_runs, name):
    run = tiny_runs[name]
    scores = attribution.attribute(run, TEST_SAMPLES, adjoint="manual")
    examples = [0, 11, 25, 39]
    fd = torch.stack([central_difference(run.spec, run, i, "loss", h=1e-4) for i in examples], 1)
    assert relative_error(scores[:, examples], fd) <= FD_RTOL


@pytest.mark.parametrize("measurement", ["margin", "logit"])
def test_other_measurements_match_finite_differences(tiny_runs, measurement):
    run = tiny_runs["momentum"]
    scores = attribution.attribute(run, TEST_SAMPLES, measurement=measurement)
    examples = [4, 30]
    fd = torch.stack([central_difference(run.spec, run, i, measurement, h=1e-4)
                      for i in examples], 1)
    assert relative_error(scores[:, examples], fd) <= FD_RTOL


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CASES))
def test_manual_adjoint_equals_generic(tiny_runs, name):
    run = tiny_runs[name]
    manual = attribution.attribute(run, TEST_SAMPLES, adjoint="manual")
    generic = attribution.attribute(run, TEST_SAMPLES, adjoint="generic")
    assert relative_error(manual, generic) <= EXACT_RTOL


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_manual_equals_generic_across_schedules(schedule):
    run = attribution.train(tiny_spec(optimizer="adamw", lr=0.02, eps_root=1e-8,
                                      schedule=schedule, epochs=1))
    manual = attribution.attribute(run, TEST_SAMPLES, adjoint="manual")
    generic = attribution.attribute(run, TEST_SAMPLES, adjoint="generic")
    assert relative_error(manual, generic) <= EXACT_RTOL


def test_generic_path_handles_optimizer_without_adjoint():
    spec = tiny_spec(optimizer="rmsprop", lr=0.01, beta2=0.9, eps_root=1e-6)
    run = attribution.train(spec)
    scores = attribution.attribute(run, TEST_SAMPLES, adjoint="auto")
    fd = central_difference(spec, run, 5, "loss", h=1e-4)
    assert relative_error(scores[:, 5], fd) <= FD_RTOL
    with pytest.raises(attribution.AdjointError, match="no hand-written adjoint"):
        attribution.attribute(run, TEST_SAMPLES, adjoint="manual")


def test_cnn_matches_finite_differences():
    spec = tiny_spec(architecture="cnn", hidden=[2], epochs=1, lr=0.2)
    run = attribution.train(spec)
    scores = attribution.attribute(run, TEST_SAMPLES)
    fd = central_difference(spec, run, 3, "loss", h=1e-4)
    assert relative_error(scores[:, 3], fd) <= FD_RTOL


@pytest.mark.parametrize("policy,k", [("interval", 3), ("interval", None), ("replay", 2),
                                      ("replay", 3), ("replay", None)])
def test_checkpoint_policies_equal_keep_all(tiny_runs, policy, k):
    run = tiny_runs["adamw"]
    keep_all = attribution.attribute(run, TEST_SAMPLES, policy="keep_all")
    other = attribution.attribute(run, TEST_SAMPLES, policy=policy, k=k)
    assert torch.equal(other, keep_all)


def test_interval_uses_stored_checkpoints_bit_exactly():
    spec = tiny_spec(epochs=3, checkpoint_every=4)
    run = attribution.train(spec)
    keep_all = attribution.attribute(run, TEST_SAMPLES, policy="keep_all")
    interval = attribution.attribute_with_stats(run, TEST_SAMPLES, policy="interval", k=4)
    assert torch.equal(interval.scores, keep_all)
    # Stored anchors replace the forward sweep: only segment replays remain.
    assert interval.stats.forward_steps == spec.num_steps - spec.num_steps // 4


def test_batched_equals_one_at_a_time(tiny_runs):
    run = tiny_runs["momentum"]
    batched = attribution.attribute(run, TEST_SAMPLES, batch_size=len(TEST_SAMPLES))
    single = torch.cat([attribution.attribute(run, [q]) for q in TEST_SAMPLES])
    assert relative_error(batched, single) <= EXACT_RTOL
    chunked = attribution.attribute(run, TEST_SAMPLES, batch_size=2)
    assert relative_error(chunked, single) <= EXACT_RTOL


def test_group_seed_equals_weighted_sum(tiny_runs):
    run = tiny_runs["sgd"]
    per_sample = attribution.attribute(run, TEST_SAMPLES)
    coefficients = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    group = attribution.attribute_with_stats(run, TEST_SAMPLES, seed_weights=coefficients)
    expected = (coefficients[:, None] * per_sample).sum(0, keepdim=True)
    assert relative_error(group.scores, expected) <= EXACT_RTOL


def test_replayed_states_equal_stored_checkpoints():
    spec = tiny_spec(optimizer="adamw", lr=0.01, eps_root=1e-6, epochs=3, checkpoint_every=3)
    run = attribution.train(spec)
    trainer = run.trainer
    state = run.checkpoints[0]
    for t in range(spec.num_steps):
        state = trainer.advance(state, t)
        if t + 1 in run.checkpoints:
            for replayed, stored in zip(state, run.checkpoints[t + 1]):
                assert torch.equal(replayed, stored)
    assert len(run.checkpoints) == len(range(0, spec.num_steps, 3)) + 1


def test_reverse_states_yield_every_step_once():
    spec = tiny_spec(epochs=5)
    run = attribution.train(spec)
    for policy, k in [("keep_all", None), ("interval", 3), ("replay", 3)]:
        steps = [t for t, _ in reverse_states(run.trainer, run.checkpoints[0], spec.num_steps,
                                              policy, k, ReplayStats())]
        assert steps == list(range(spec.num_steps - 1, -1, -1))


def test_replay_holds_fewer_states_than_keep_all():
    spec = tiny_spec(n_train=200, batch_size=10, epochs=4)  # 80 steps
    run = attribution.train(spec)
    stats = {}
    for policy in ("keep_all", "replay"):
        stats[policy] = ReplayStats()
        for _ in reverse_states(run.trainer, run.checkpoints[0], spec.num_steps, policy, 3,
                                stats[policy]):
            pass
    assert stats["keep_all"].peak_states == spec.num_steps
    assert stats["replay"].peak_states <= 3 * 5  # k * ceil(log_k T) for k = 3, T = 80
    assert stats["replay"].forward_steps <= spec.num_steps * 5


def test_predict_removal_is_minus_sum_of_scores():
    scores = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    predicted = attribution.predict_removal(scores, [0, 2])
    assert torch.equal(predicted, torch.tensor([-4.0, 0.5]))
    with pytest.raises(attribution.SpecError, match="duplicates"):
        attribution.predict_removal(scores, [1, 1])
    with pytest.raises(attribution.SpecError, match="must lie in"):
        attribution.predict_removal(scores, [3])


def test_removal_prediction_tracks_retraining(tiny_runs):
    run = tiny_runs["momentum"]
    scores = attribution.attribute(run, TEST_SAMPLES)
    removed = [9]
    weights = torch.ones(run.n_train, dtype=torch.float64)
    weights[removed] = 0
    actual = attribution.train(run.spec, data_weights=weights).measure(TEST_SAMPLES)
    change = actual - run.measure(TEST_SAMPLES)
    predicted = attribution.predict_removal(scores, removed)
    # First order in the weights: the error is small next to the change itself.
    assert relative_error(predicted, change) < 0.2
