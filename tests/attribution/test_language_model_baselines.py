"""TracIn, EK-FAC and TRAK on a tiny shakespeare-gpt run, checked against MAGIC."""

import pytest
import torch

import attribution
from attribution.baselines import method_scores

TEST_SAMPLES = [0, 1, 2, 3]
N_TRAIN = 30
REFERENCE_PACKAGES = {"ekfac": "kronfluence", "trak": "trak"}


@pytest.fixture(scope="module")
def lm_run():
    spec = attribution.recipes.get("shakespeare-gpt", n_train=N_TRAIN, n_test=4,
                                   sequence_length=8, hidden=[16], n_heads=2,
                                   batch_size=10, epochs=1)
    return attribution.train(spec)


@pytest.fixture(scope="module")
def magic_scores(lm_run):
    return method_scores(lm_run, TEST_SAMPLES, "magic")


def mean_correlation(scores: torch.Tensor, reference: torch.Tensor) -> float:
    """Return the mean over test samples of the Pearson correlation of two score rows."""
    rows = [torch.corrcoef(torch.stack([scores[q], reference[q]]))[0, 1]
            for q in range(scores.shape[0])]
    return float(torch.stack(rows).mean())


@pytest.mark.parametrize("method", ["tracin", "ekfac", "trak"])
def test_lm_baseline_agrees_with_magic(lm_run, magic_scores, method):
    if method in REFERENCE_PACKAGES:
        pytest.importorskip(REFERENCE_PACKAGES[method])
    scores = method_scores(lm_run, TEST_SAMPLES, method)
    assert scores.shape == (len(TEST_SAMPLES), N_TRAIN)
    assert torch.isfinite(scores).all()
    assert mean_correlation(scores, magic_scores) > 0


def test_lm_trak_margin_measurement(lm_run):
    pytest.importorskip("trak")
    magic = method_scores(lm_run, TEST_SAMPLES, "magic", measurement="margin")
    scores = method_scores(lm_run, TEST_SAMPLES, "trak", measurement="margin")
    assert scores.shape == (len(TEST_SAMPLES), N_TRAIN)
    assert torch.isfinite(scores).all()
    assert mean_correlation(scores, magic) > 0
