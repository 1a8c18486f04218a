"""Linear datamodeling score (LDS): how well scores predict retraining outcomes.

For each drop fraction p, draw ``num_subsets`` random subsets that each remove
exactly ``round(p * n_train)`` training examples, retrain once per subset with
those weights set to 0 (same seed and batch order), and compute per test sample
the Spearman correlation between the predicted measurement
``phi(1) - sum_{i in R} scores[q, i]`` and the retrained one. LDS is the mean
over test samples.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from .errors import SpecError
from .training import TrainingRun, check_test_indices, train

logger = logging.getLogger(__name__)


@dataclass
class LDSResult:
    """LDS per fraction, per test sample, and the predicted and retrained measurements.

    ``predicted[p]`` and ``actual[p]`` have shape (num_subsets, k): measurements
    after removing each subset, as predicted by the scores and as retrained.
    """

    fractions: list[float]
    lds: dict[float, float]
    per_sample: dict[float, list[float]]
    predicted: dict[float, np.ndarray] = field(repr=False)
    actual: dict[float, np.ndarray] = field(repr=False)
    base: np.ndarray = field(repr=False)
    subsets: dict[float, np.ndarray] = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "fractions": self.fractions,
            "lds": {str(p): v for p, v in self.lds.items()},
            "per_sample": {str(p): v for p, v in self.per_sample.items()},
            "seconds": self.seconds,
        }


def draw_subsets(n_train: int, fraction: float, num_subsets: int, seed: int) -> np.ndarray:
    """Return (num_subsets, round(fraction * n_train)) distinct indices per row."""
    if not 0 < fraction < 1:
        raise SpecError(f"drop fraction {fraction!r} must lie strictly between 0 and 1")
    size = round(fraction * n_train)
    if size < 1:
        raise SpecError(f"drop fraction {fraction} removes no example of {n_train}; raise it")
    rng = np.random.default_rng([seed, int(round(fraction * 1e6))])
    return np.stack([rng.choice(n_train, size=size, replace=False) for _ in range(num_subsets)])


def spearman_per_column(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of two (m, k) arrays, shape (k,)."""
    values = []
    for q in range(predicted.shape[1]):
        rho = spearmanr(predicted[:, q], actual[:, q]).statistic
        values.append(float(rho) if np.isfinite(rho) else 0.0)
    return np.asarray(values)


def retrain_measurements(run: TrainingRun, subsets: np.ndarray, test_indices: list[int],
                         measurement: str, progress: bool = False) -> np.ndarray:
    """Retrain once per subset with its weights zeroed; return (num_subsets, k) measurements."""
    rows = []
    iterator: Iterable = subsets
    if progress:
        from tqdm import tqdm

        iterator = tqdm(subsets, desc="retrain", unit="model", leave=False)
    for removed in iterator:
        weights = run.data_weights.clone()
        weights[torch.as_tensor(removed)] = 0
        retrained = train(run.spec, data_weights=weights, keep_checkpoints=False,
                          device=run.device)
        rows.append(retrained.measure(test_indices, "loss" if measurement is None else measurement)
                    .to(torch.float64).numpy())
    return np.stack(rows)


def evaluate_lds(run: TrainingRun, test_indices: Iterable[int],
                 fractions: Sequence[float] = (0.01, 0.05, 0.1), num_subsets: int = 50,
                 seed: int = 0, scores: Optional[torch.Tensor] = None,
                 measurement: str = "loss", progress: bool = False) -> LDSResult:
    """Retrain on random subsets and return the LDS of ``scores`` (MAGIC when None).

    ``scores`` has shape (k, n_train) in the MAGIC convention (derivative of the
    measurement w.r.t. the data weight). Cost: ``len(fractions) * num_subsets``
    training runs plus one reverse pass when ``scores`` is None.
    """
    from .metagrad import attribute

    indices = check_test_indices(test_indices, run.n_test)
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 3:
        raise SpecError(f"num_subsets={num_subsets!r} must be an integer >= 3 "
                        "(use 50 or more for a stable estimate)")
    started = time.perf_counter()
    if scores is None:
        scores = attribute(run, indices, measurement=measurement, progress=progress)
    if scores.shape != (len(indices), run.n_train):
        raise SpecError(f"scores has shape {tuple(scores.shape)}, expected "
                        f"({len(indices)}, {run.n_train})")
    scores64 = scores.detach().to(torch.float64).numpy()
    base = run.measure(indices, measurement).to(torch.float64).numpy()
    result = LDSResult(fractions=[float(p) for p in fractions], lds={}, per_sample={},
                       predicted={}, actual={}, base=base, subsets={})
    for fraction in result.fractions:
        subsets = draw_subsets(run.n_train, fraction, num_subsets, seed)
        actual = retrain_measurements(run, subsets, indices, measurement, progress)
        predicted = base[None, :] - scores64[:, subsets].sum(axis=2).T
        per_sample = spearman_per_column(predicted, actual)
        result.subsets[fraction] = subsets
        result.predicted[fraction] = predicted
        result.actual[fraction] = actual
        result.per_sample[fraction] = per_sample.tolist()
        result.lds[fraction] = float(per_sample.mean())
        logger.info("LDS at %.0f%% drop: %.3f over %d subsets", 100 * fraction,
                    result.lds[fraction], num_subsets)
    result.seconds = time.perf_counter() - started
    return result


# ------------------------------------------------------------ several methods
@dataclass
class MethodComparison:
    """LDS of several methods on the same retrained subsets.

    ``lds[method][p]`` is the mean over test samples, ``per_sample[method][p]`` the
    (k,) Spearman correlations, ``predicted[method][p]`` the (num_subsets, k)
    predicted measurements; ``failed[method]`` contains the error of a method that
    failed, which then has no LDS.
    """

    test_indices: list[int]
    fractions: list[float]
    num_subsets: int
    seed: int
    measurement: str
    base: np.ndarray = field(repr=False)
    subsets: dict[float, np.ndarray] = field(repr=False)
    actual: dict[float, np.ndarray] = field(repr=False)
    lds: dict[str, dict[float, float]] = field(default_factory=dict)
    per_sample: dict[str, dict[float, list[float]]] = field(default_factory=dict)
    predicted: dict[str, dict[float, np.ndarray]] = field(default_factory=dict, repr=False)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add_scores(self, method: str, scores: np.ndarray, seconds: float = 0.0) -> None:
        """Score ``method``'s (k, n_train) matrix against the retrained measurements."""
        self.lds[method], self.per_sample[method], self.predicted[method] = {}, {}, {}
        for fraction in self.fractions:
            predicted, per_sample = lds_of_scores(scores, self.base, self.subsets[fraction],
                                                  self.actual[fraction])
            self.predicted[method][fraction] = predicted
            self.per_sample[method][fraction] = per_sample.tolist()
            self.lds[method][fraction] = float(per_sample.mean())
        self.seconds[method] = seconds

    def to_dict(self) -> dict:
        """JSON-ready summary: LDS keyed by method then fraction, per test sample, failures."""
        return {
            "test_indices": self.test_indices, "fractions": self.fractions,
            "num_subsets": self.num_subsets, "seed": self.seed, "measurement": self.measurement,
            "lds": {m: {str(p): v for p, v in by.items()} for m, by in self.lds.items()},
            "per_sample": {m: {str(p): v for p, v in by.items()}
                           for m, by in self.per_sample.items()},
            "failed": dict(self.failed), "seconds": dict(self.seconds),
        }

    def changes(self, method: str, fraction: float) -> dict[str, list[list[float]]]:
        """Predicted and true changes of the measurements, each (num_subsets, k) as lists."""
        return {"predicted": (self.predicted[method][fraction] - self.base[None, :]).tolist(),
                "actual": (self.actual[fraction] - self.base[None, :]).tolist()}


def lds_of_scores(scores: np.ndarray, base: np.ndarray, subsets: np.ndarray,
                  actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the predicted measurements (m, k) and the per-sample Spearman correlations (k,).

    ``scores`` is (k, n_train) in MAGIC's convention, ``base`` the (k,) measurements
    of the full run, ``subsets`` (m, s) removed indices and ``actual`` (m, k).
    """
    predicted = base[None, :] - scores[:, subsets].sum(axis=2).T
    return predicted, spearman_per_column(predicted, actual)


def compare_methods(run: TrainingRun, test_indices: Iterable[int], methods: Sequence[str],
                    fractions: Sequence[float] = (0.01, 0.05, 0.1), num_subsets: int = 50,
                    seed: int = 0, measurement: str = "loss",
                    options: Optional[dict[str, dict]] = None,
                    progress: bool = False) -> MethodComparison:
    """Compute every method's scores and their LDS on one shared set of retrained subsets.

    A method that raises MethodError (library failure, NaN) is recorded in
    ``failed`` and the others still complete. Cost: ``len(fractions) * num_subsets``
    training runs plus each method's own cost.
    """
    from .baselines import MethodError, check_methods, method_scores

    methods = check_methods(methods)
    indices = check_test_indices(test_indices, run.n_test)
    _check_num_subsets(num_subsets)
    options = options or {}
    base = measure_all(run, measurement)[indices]
    subsets, actual = {}, {}
    for fraction in [float(p) for p in fractions]:
        subsets[fraction] = draw_subsets(run.n_train, fraction, num_subsets, seed)
        rows = subsets[fraction]
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, desc=f"retrain {100 * fraction:g}%", unit="model", leave=False)
        actual[fraction] = np.stack([retrain_without(run, removed, measurement)[indices]
                                     for removed in rows])
    result = MethodComparison(test_indices=indices, fractions=list(subsets),
                              num_subsets=num_subsets, seed=seed, measurement=measurement,
                              base=base, subsets=subsets, actual=actual)
    for method in methods:
        started = time.perf_counter()
        try:
            scores = method_scores(run, indices, method, measurement=measurement,
                                   **options.get(method, {}))
        except MethodError as error:
            logger.warning("%s failed: %s", method, error)
            result.failed[method] = str(error)
            continue
        result.add_scores(method, scores.numpy(), seconds=time.perf_counter() - started)
        logger.info("%s LDS: %s", method, result.lds[method])
    return result


def measure_all(run: TrainingRun, measurement: str = "loss") -> np.ndarray:
    """Return the measurement of every test sample of the run, shape (n_test,), float64."""
    return run.measure(range(run.n_test), measurement).to(torch.float64).cpu().numpy()


def retrain_without(run: TrainingRun, removed: Sequence[int] | np.ndarray,
                    measurement: str = "loss") -> np.ndarray:
    """Retrain with the ``removed`` examples' weights set to 0; return (n_test,) measurements.

    All test samples are measured, so one retraining serves every later choice
    of test samples (the evaluation service stores these rows per run).
    """
    weights = run.data_weights.clone()
    weights[torch.as_tensor(np.asarray(removed, dtype=np.int64))] = 0
    retrained = train(run.spec, data_weights=weights, keep_checkpoints=False, device=run.device)
    return measure_all(retrained, measurement)


def _check_num_subsets(num_subsets: int) -> None:
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 3:
        raise SpecError(f"num_subsets={num_subsets!r} must be an integer >= 3 "
                        "(use 50 or more for a stable estimate)")
