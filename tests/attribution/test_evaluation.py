"""LDS arithmetic, the baselines, method comparison and the smoothness probe."""

import json

import numpy as np
import pytest
import torch

import attribution
from attribution import baselines
from attribution.baselines import MethodError, method_scores
from attribution.lds import compare_methods, lds_of_scores, spearman_per_column
from attribution.smoothness import smoothness_probe
from service.cli import main

TINY = dict(n_train=200, n_test=50, epochs=2, hidden=[16])
TINY_ARGS = ["--recipe", "digits-mlp", "--set", "n_train=200", "--set", "n_test=50",
             "--set", "epochs=2", "--set", "hidden=[16]"]


@pytest.fixture(scope="module")
def tiny_run():
    return attribution.train(attribution.recipes.get("digits-mlp", **TINY))


def test_lds_matches_hand_computed_spearman():
    # Removing example j alone predicts base - scores[j]: 0.6, 0.9, 0.7, 0.8 (ranks 1 4 2 3).
    scores = np.array([[0.4, 0.1, 0.3, 0.2]])
    subsets = np.array([[0], [1], [2], [3]])
    actual = np.array([[0.5], [0.7], [0.9], [0.6]])  # ranks 1 3 4 2
    predicted, per_sample = lds_of_scores(scores, np.array([1.0]), subsets, actual)
    np.testing.assert_allclose(predicted[:, 0], [0.6, 0.9, 0.7, 0.8])
    # rank differences 0, 1, -2, 1: rho = 1 - 6 * 6 / (4 * (16 - 1)) = 0.4
    assert per_sample[0] == pytest.approx(0.4)


def test_spearman_of_constant_column_is_zero():
    predicted = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    actual = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])
    np.testing.assert_allclose(spearman_per_column(predicted, actual), [-1.0, 0.0])


@pytest.mark.parametrize("method", ["trak", "ekfac", "tracin"])
def test_baseline_scores_finite_and_aligned(tiny_run, method):
    indices = [0, 1, 2, 3]
    scores = method_scores(tiny_run, indices, method)
    assert scores.shape == (4, 200)
    assert torch.isfinite(scores).all()
    magic = method_scores(tiny_run, indices, "magic")
    correlations = [torch.corrcoef(torch.stack([scores[q], magic[q]]))[0, 1].item()
                    for q in range(4)]
    assert min(correlations) > 0, correlations


def test_trak_rejects_logit_measurement(tiny_run):
    with pytest.raises(attribution.SpecError, match="margin"):
        method_scores(tiny_run, [0], "trak", measurement="logit")


def test_failed_method_leaves_others(tiny_run, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("projector exploded")

    monkeypatch.setitem(baselines._IMPLEMENTATIONS, "trak", broken)
    result = compare_methods(tiny_run, [0, 1], ["magic", "trak", "tracin"], fractions=[0.1],
                             num_subsets=4)
    assert "projector exploded" in result.failed["trak"]
    assert set(result.lds) == {"magic", "tracin"}
    assert result.lds["magic"][0.1] > 0.5


def test_nan_scores_are_a_method_error(tiny_run, monkeypatch):
    monkeypatch.setitem(baselines._IMPLEMENTATIONS, "tracin",
                        lambda run, indices, measurement: torch.full((1, 200), float("nan")))
    with pytest.raises(MethodError, match="NaN"):
        method_scores(tiny_run, [0], "tracin")


def test_unknown_method_rejected(tiny_run):
    with pytest.raises(attribution.SpecError, match="unknown methods"):
        compare_methods(tiny_run, [0], ["influence"], fractions=[0.1], num_subsets=3)


def test_smoothness_ranks_smooth_above_non_smooth():
    smooth = attribution.train(attribution.recipes.get("digits-mlp", **{**TINY, "epochs": 10}))
    rough = attribution.train(attribution.recipes.get(
        "digits-mlp", **{**TINY, "epochs": 10, "output_scale": 1.0, "lr": 1.0}))
    smooth_result = smoothness_probe(smooth)
    rough_result = smoothness_probe(rough)
    assert smooth_result.score > rough_result.score
    assert smooth_result.warning is None
    assert "not smooth" in rough_result.warning


def test_cli_lds_all_methods(capsys):
    assert main(["lds", *TINY_ARGS, "--methods", "magic,trak,ekfac,tracin", "--fractions",
                 "0.05,0.1", "--subsets", "4", "--test-samples", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload["lds"]) == ["magic", "trak", "ekfac", "tracin"]
    assert set(payload["lds"]["trak"]) == {"0.05", "0.1"}
    assert payload["failed"] == {}
    assert 0 <= payload["smoothness"]["score"] <= 1
