"""The shakespeare-gpt recipe: a causal transformer on real Shakespeare text."""

import pytest
import torch

import attribution
from attribution.text import decode, load_text

from .conftest import EXACT_RTOL, FD_RTOL, relative_error

TEST_SAMPLES = [0, 3]


def tiny_gpt(**overrides):
    base = dict(n_train=20, n_test=4, sequence_length=8, hidden=[16], n_heads=2,
                batch_size=5, epochs=1, dtype="float64", lr=1e-2, eps_root=1e-6)
    base.update(overrides)
    return attribution.recipes.get("shakespeare-gpt", **base)


@pytest.fixture(scope="module")
def gpt_run():
    return attribution.train(tiny_gpt())


def test_chunks_are_real_shakespeare(gpt_run):
    dataset = gpt_run.trainer.dataset
    assert dataset.task == "language_model"
    assert dataset.x_train.shape == (20, 8)
    text = decode(dataset.x_test[0], dataset.vocab)
    assert len(text) == 8
    # Targets are the inputs shifted by one character.
    assert (dataset.x_train[:, 1:] == dataset.y_train[:, :-1]).all()
    full_text = load_text()
    assert "HAMLET" in full_text
    # Every chunk is a verbatim slice of the plays.
    assert decode(dataset.x_train[5], dataset.vocab) in full_text


def test_scores_match_finite_differences(gpt_run):
    spec = gpt_run.spec
    scores = attribution.attribute(gpt_run, TEST_SAMPLES)
    h = 1e-4
    for example in (1, 12):
        weights = torch.ones(spec.n_train, dtype=torch.float64)
        weights[example] += h
        plus = attribution.train(spec, data_weights=weights).measure(TEST_SAMPLES)
        weights[example] -= 2 * h
        minus = attribution.train(spec, data_weights=weights).measure(TEST_SAMPLES)
        fd = (plus - minus) / (2 * h)
        assert relative_error(scores[:, example], fd) <= FD_RTOL


def test_batched_equals_one_at_a_time(gpt_run):
    batched = attribution.attribute(gpt_run, TEST_SAMPLES)
    single = torch.cat([attribution.attribute(gpt_run, [q]) for q in TEST_SAMPLES])
    assert relative_error(batched, single) <= EXACT_RTOL


def test_manual_adjoint_equals_generic(gpt_run):
    manual = attribution.attribute(gpt_run, TEST_SAMPLES, adjoint="manual")
    generic = attribution.attribute(gpt_run, TEST_SAMPLES, adjoint="generic")
    assert relative_error(manual, generic) <= EXACT_RTOL


def test_measurement_is_mean_token_loss(gpt_run):
    trainer = gpt_run.trainer
    logits = trainer.model(gpt_run.parameters, trainer.x_test[:1])[0]
    expected = torch.nn.functional.cross_entropy(logits, trainer.y_test[0])
    assert torch.allclose(gpt_run.measure([0])[0], expected, rtol=1e-12, atol=0)


def test_gpt_rejects_image_data():
    with pytest.raises(attribution.SpecError, match="does not fit dataset"):
        attribution.train(attribution.recipes.get("mnist-mlp", architecture="gpt"))


def test_gpt_rejects_width_not_divisible_by_heads():
    with pytest.raises(attribution.SpecError, match="divisible by n_heads=3"):
        attribution.train(tiny_gpt(n_heads=3))
