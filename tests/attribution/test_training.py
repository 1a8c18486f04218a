"""Deterministic training, persistence, recipes and input checks."""

import math

import numpy as np
import pytest
import torch

import attribution
from attribution import recipes
from attribution.data import load_dataset, make_split
from attribution.lds import draw_subsets, spearman_per_column
from attribution.metagrad import _check_finite
from attribution.models import FlatModel
from attribution.training import measurement_from_logits

from .conftest import tiny_spec


def test_training_twice_is_bitwise_identical():
    spec = tiny_spec(optimizer="adamw", lr=0.01, eps_root=1e-6)
    first, second = attribution.train(spec), attribution.train(spec)
    assert torch.equal(first.parameters, second.parameters)
    for a, b in zip(first.final_state, second.final_state):
        assert torch.equal(a, b)


def test_zero_weight_differs_from_removing_nothing():
    spec = tiny_spec()
    weights = torch.ones(spec.n_train, dtype=torch.float64)
    weights[3] = 0
    base = attribution.train(spec)
    dropped = attribution.train(spec, data_weights=weights)
    assert not torch.equal(base.parameters, dropped.parameters)


def test_batch_order_does_not_depend_on_weights():
    spec = tiny_spec()
    weights = torch.rand(spec.n_train, dtype=torch.float64)
    a = attribution.train(spec).trainer.order.permutations
    b = attribution.train(spec, data_weights=weights).trainer.order.permutations
    assert torch.equal(a, b)
    for epoch in a:
        assert sorted(epoch.tolist()) == list(range(spec.n_train))


def test_save_and_load_round_trip(tmp_path):
    spec = tiny_spec(checkpoint_every=2)
    run = attribution.train(spec)
    run.save(tmp_path / "run")
    loaded = attribution.TrainingRun.load(tmp_path / "run")
    assert loaded.spec == spec
    assert loaded.fingerprint == run.fingerprint
    assert sorted(loaded.checkpoints) == sorted(run.checkpoints)
    assert torch.equal(loaded.parameters, run.parameters)
    assert torch.equal(attribution.attribute(loaded, [0, 1]), attribution.attribute(run, [0, 1]))


def test_load_rejects_tampered_spec(tmp_path):
    run = attribution.train(tiny_spec())
    run.save(tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec_file.read_text().replace('"seed": 3', '"seed": 4'))
    with pytest.raises(attribution.DataError, match="does not match"):
        attribution.TrainingRun.load(tmp_path)


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="spec.json"):
        attribution.TrainingRun.load(tmp_path)


def test_fingerprint_changes_with_spec_and_weights():
    spec = tiny_spec()
    run = attribution.train(spec)
    other = attribution.train(spec.replace(seed=4))
    weights = torch.ones(spec.n_train, dtype=torch.float64)
    weights[0] = 0.5
    weighted = attribution.train(spec, data_weights=weights)
    assert len({run.fingerprint, other.fingerprint, weighted.fingerprint}) == 3
    assert run.fingerprint == attribution.train(spec).fingerprint


def test_measurements_match_formulas():
    logits = torch.tensor([1.0, 3.0, -0.5], dtype=torch.float64)
    y = torch.tensor(1)
    loss = measurement_from_logits(logits, y, "loss")
    margin = measurement_from_logits(logits, y, "margin")
    logit = measurement_from_logits(logits, y, "logit")
    assert math.isclose(loss.item(), -torch.log_softmax(logits, 0)[1].item(), rel_tol=1e-12)
    assert math.isclose(margin.item(), 3.0 - math.log(math.exp(1.0) + math.exp(-0.5)),
                        rel_tol=1e-12)
    assert logit.item() == 3.0


def test_measure_uses_final_parameters():
    run = attribution.train(tiny_spec())
    values = run.measure([0, 5], "loss")
    logits = run.trainer.model(run.parameters, run.trainer.x_test[[0, 5]])
    expected = torch.nn.functional.cross_entropy(logits, run.trainer.y_test[[0, 5]],
                                                 reduction="none")
    assert torch.allclose(values, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", recipes.names())
def test_recipes_accept_dtype_and_epochs(name):
    spec = recipes.get(name, dtype="float64", epochs=1)
    assert spec.dtype == "float64"
    assert spec.epochs == 1


def test_mnist_recipe_loads_real_images():
    spec = recipes.get("mnist-mlp")
    data = load_dataset(spec.dataset, spec.n_train, spec.n_test)
    assert data.x_train.shape == (4000, 1, 28, 28)
    assert data.x_test.shape == (1000, 1, 28, 28)
    assert data.x_train.min() >= 0.0
    assert data.x_train.max() <= 1.0
    assert sorted(np.unique(data.y_train).tolist()) == list(range(10))


@pytest.mark.parametrize("overrides,match", [
    (dict(optimizr="sgd"), "unknown training spec field"),
    (dict(epochs=0), "epochs=0 must be a positive integer"),
    (dict(epochs="2"), "epochs='2' must be an integer"),
    (dict(lr=float("nan")), "lr=nan must be a finite number"),
    (dict(optimizer="lbfgs"), "optimizer='lbfgs' is not supported"),
    (dict(optimizer="adamw", eps_root=0.0), "eps_root"),
    (dict(batch_size=500), "exceeds n_train"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(optimizer="adamw", beta2=1.0), "beta2=1.0 must be less than 1.0"),
])
def test_invalid_spec_fields_are_rejected(overrides, match):
    with pytest.raises(attribution.SpecError, match=match):
        tiny_spec(**overrides)


def test_unknown_recipe_is_rejected():
    with pytest.raises(attribution.SpecError, match="unknown recipe 'cifar'"):
        recipes.get("cifar")


@pytest.mark.parametrize("weights,match", [
    (torch.ones(39), "shape"),
    (torch.tensor([float("nan")] + [1.0] * 39), "not finite"),
    (torch.tensor([-1.0] + [1.0] * 39), "negative"),
])
def test_invalid_data_weights_are_rejected(weights, match):
    with pytest.raises(attribution.DataError, match=match):
        attribution.train(tiny_spec(), data_weights=weights)


def test_nan_inputs_are_rejected():
    x = np.zeros((10, 1, 2, 2))
    x[4, 0, 1, 1] = np.nan
    with pytest.raises(attribution.DataError, match="NaN or infinite"):
        make_split("toy", x, np.zeros(10, dtype=int), 6, 4, num_classes=2)


def test_diverging_training_names_the_step():
    with pytest.raises(attribution.DataError, match="at step"):
        attribution.train(tiny_spec(lr=1e200, output_scale=100.0, optimizer="sgd"))


@pytest.mark.parametrize("indices,match", [([20], "out of range"), ([1, 1], "duplicated"),
                                           ([], "empty")])
def test_invalid_test_indices_are_rejected(indices, match):
    run = attribution.train(tiny_spec())
    with pytest.raises(attribution.TestIndexError, match=match):
        attribution.attribute(run, indices)
    if indices:
        with pytest.raises(attribution.TestIndexError, match=match):
            run.measure(indices)


def test_invalid_attribute_options_are_rejected():
    run = attribution.train(tiny_spec())
    with pytest.raises(attribution.SpecError, match="measurement='accuracy'"):
        attribution.attribute(run, [0], measurement="accuracy")
    with pytest.raises(attribution.SpecError, match="checkpoint policy 'all'"):
        attribution.attribute(run, [0], policy="all")
    with pytest.raises(attribution.SpecError, match="k=1"):
        attribution.attribute(run, [0], policy="replay", k=1)
    with pytest.raises(attribution.SpecError, match="adjoint='fast'"):
        attribution.attribute(run, [0], adjoint="fast")


def test_dropout_model_is_rejected():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    with pytest.raises(attribution.SpecError, match="Dropout"):
        FlatModel(module)


def test_non_finite_adjoint_names_the_step():
    adjoint = (torch.tensor([1.0, float("inf")]),)
    with pytest.raises(attribution.AdjointError, match="at step 17"):
        _check_finite(adjoint, 17)


def test_spearman_matches_hand_computation():
    predicted = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0], [5.0, 0.0]])
    actual = np.array([[10.0, 1.0], [20.0, 2.0], [40.0, 3.0], [30.0, 4.0], [50.0, 5.0]])
    # Column 0 ranks (1,2,3,4,5) vs (1,2,4,3,5): d^2 sums to 2, rho = 1 - 6*2/(5*24) = 0.9.
    # Column 1 is exactly reversed: rho = -1.
    rho = spearman_per_column(predicted, actual)
    assert rho[0] == pytest.approx(0.9, abs=1e-12)
    assert rho[1] == pytest.approx(-1.0, abs=1e-12)


def test_subsets_remove_exact_count_without_repeats():
    subsets = draw_subsets(200, 0.05, num_subsets=7, seed=1)
    assert subsets.shape == (7, 10)
    for row in subsets:
        assert len(set(row.tolist())) == 10
    assert np.array_equal(subsets, draw_subsets(200, 0.05, num_subsets=7, seed=1))
    with pytest.raises(attribution.SpecError, match="removes no example"):
        draw_subsets(20, 0.01, num_subsets=3, seed=0)


def test_lds_is_high_on_smooth_tiny_run():
    spec = tiny_spec(n_train=100, epochs=2, output_scale=0.2, lr=0.1)
    run = attribution.train(spec)
    result = attribution.evaluate_lds(run, [0, 1, 2, 3], fractions=[0.02, 0.1], num_subsets=12)
    assert set(result.lds) == {0.02, 0.1}
    assert result.actual[0.1].shape == (12, 4)
    assert result.lds[0.02] > 0.9
    assert result.lds[0.1] > 0.9


def test_run_fingerprint_predicts_trained_fingerprint():
    spec = tiny_spec()
    weights = torch.ones(spec.n_train, dtype=torch.float64)
    weights[2] = 0
    assert attribution.run_fingerprint(spec) == attribution.train(spec).fingerprint
    assert (attribution.run_fingerprint(spec, weights)
            == attribution.train(spec, data_weights=weights).fingerprint)


def test_run_moves_between_devices_unchanged(tmp_path):
    run = attribution.train(tiny_spec())
    moved = run.to("cpu")
    assert moved.device == torch.device("cpu")
    assert torch.equal(attribution.attribute(moved, [0]), attribution.attribute(run, [0]))
    run.save(tmp_path)
    loaded = attribution.TrainingRun.load(tmp_path, device="cpu")
    assert loaded.device == torch.device("cpu")


def test_optimizer_without_any_adjoint_is_rejected(monkeypatch):
    from attribution.optim import RMSprop

    run = attribution.train(tiny_spec(optimizer="rmsprop", lr=0.01, eps_root=1e-6))
    monkeypatch.setattr(RMSprop, "differentiable", False)
    with pytest.raises(attribution.AdjointError, match="no generic path"):
        attribution.attribute(run, [0])


def test_fractional_test_index_is_rejected():
    run = attribution.train(tiny_spec())
    with pytest.raises(attribution.TestIndexError, match="must be integers"):
        attribution.attribute(run, [1.5])
    assert attribution.attribute(run, [torch.tensor(1)]).shape == (1, run.n_train)
