"""Baseline attribution methods beside MAGIC, all in MAGIC's convention and sign.

``scores[q, i]`` approximates ``d measurement_q / d w_i`` at w = 1 for every
method, so LDS and predictions treat them alike. TRAK and EK-FAC run through
their reference packages (``traker`` and ``kronfluence``, installed by the
project's ``baselines`` extra); TracIn is implemented here.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

import torch

from ..errors import AttributionError, SpecError
from ..training import TrainingRun, check_measurement, check_test_indices

logger = logging.getLogger(__name__)

METHODS = ("magic", "trak", "ekfac", "tracin")


class MethodError(AttributionError):
    """A method failed (a library error, or NaN or infinite scores)."""


def _magic(run: TrainingRun, indices: list[int], measurement: str, **options: Any):
    from ..metagrad import attribute

    return attribute(run, indices, measurement=measurement, **options)


def _trak(run: TrainingRun, indices: list[int], measurement: str, **options: Any):
    from .trak import trak_scores

    return trak_scores(run, indices, measurement=measurement, **options)


def _ekfac(run: TrainingRun, indices: list[int], measurement: str, **options: Any):
    from .ekfac import ekfac_scores

    return ekfac_scores(run, indices, measurement=measurement, **options)


def _tracin(run: TrainingRun, indices: list[int], measurement: str, **options: Any):
    from .tracin import tracin_scores

    return tracin_scores(run, indices, measurement=measurement, **options)


_IMPLEMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "magic": _magic, "trak": _trak, "ekfac": _ekfac, "tracin": _tracin,
}


def check_methods(methods: Iterable[str]) -> list[str]:
    """Return the method names as a list; raise SpecError for unknown or duplicated names."""
    names = [str(m) for m in methods]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SpecError(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    if not names or len(set(names)) != len(names):
        raise SpecError(f"methods {names} must list at least one method, each once")
    return names


def method_scores(run: TrainingRun, test_indices: Iterable[int], method: str,
                  measurement: str = "loss", **options: Any) -> torch.Tensor:
    """Return ``method``'s scores in MAGIC's convention, shape (k, n_train), float64 on CPU.

    Raises SpecError for an unknown method, measurement or option, and MethodError
    when the method raises any other exception or returns NaN or infinite scores.
    """
    check_methods([method])
    check_measurement(measurement)
    indices = check_test_indices(test_indices, run.n_test)
    started = time.perf_counter()
    try:
        scores = _IMPLEMENTATIONS[method](run, indices, measurement, **options)
    except AttributionError:
        raise
    except TypeError as error:
        raise SpecError(f"invalid options {options} for method {method!r}: {error}") from None
    except Exception as error:  # noqa: BLE001 - third-party failures become MethodError
        raise MethodError(f"{method} failed: {type(error).__name__}: {error}") from error
    scores = scores.detach().to("cpu", torch.float64)
    if scores.shape != (len(indices), run.n_train):
        raise MethodError(f"{method} returned shape {tuple(scores.shape)}, expected "
                          f"({len(indices)}, {run.n_train})")
    if not torch.isfinite(scores).all():
        raise MethodError(f"{method} returned NaN or infinite scores")
    logger.info("%s scores for %d test samples in %.2f s", method, len(indices),
                time.perf_counter() - started)
    return scores
