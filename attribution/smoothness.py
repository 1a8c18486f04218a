"""A cheap probe of whether training is smooth in the data weights.

MAGIC's scores are exact derivatives, but they predict retraining outcomes only
where training responds almost linearly to the data weights. The probe draws
a few random directions (a random 1% subset R of the training set), retrains
with ``w = 1 - h * 1_R`` for ``h = 1/2`` and ``h = 1``, and compares the change of
every test sample's measurement at the two sizes. Where training is smooth the
full removal moves each measurement about twice as far as the half removal, in
the same direction. Where it is chaotic the two changes are unrelated.

Cost: ``2 * num_directions`` training runs. ``score`` is the mean over directions
of the Pearson correlation between the two changes across all test samples;
``sign_agreement`` is the fraction of (direction, test sample) pairs whose two
changes have the same sign (1/2 for unrelated changes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from .errors import SpecError
from .training import TrainingRun, train

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.8


@dataclass
class SmoothnessResult:
    """Outcome of ``smoothness_probe``; ``smooth`` is ``score >= threshold``."""

    score: float
    sign_agreement: float
    per_direction: list[float]
    num_directions: int
    fraction: float
    threshold: float
    smooth: bool
    seconds: float

    @property
    def warning(self) -> Optional[str]:
        """A plain-language warning when the score is below the threshold, else None."""
        if self.smooth:
            return None
        return (f"training is not smooth in the data weights (smoothness {self.score:.2f}, "
                f"below {self.threshold:.2f}): removing examples changes test losses "
                "non-linearly, so influence scores will predict retraining poorly. Scale the "
                "logits down (output_scale 0.1), lower the learning rate or use larger batches.")

    def to_dict(self) -> dict:
        return {**asdict(self), "warning": self.warning}


def smoothness_probe(run: TrainingRun, num_directions: int = 2, fraction: float = 0.01,
                     seed: int = 0, measurement: str = "loss",
                     threshold: float = DEFAULT_THRESHOLD) -> SmoothnessResult:
    """Retrain along ``num_directions`` random removal directions and score linearity.

    Raises SpecError for a non-positive number of directions or a fraction outside (0, 1).
    """
    if isinstance(num_directions, bool) or not isinstance(num_directions, int) \
            or num_directions < 1:
        raise SpecError(f"num_directions={num_directions!r} must be a positive integer")
    if not 0 < fraction < 1:
        raise SpecError(f"fraction={fraction!r} must lie strictly between 0 and 1")
    started = time.perf_counter()
    all_test = range(run.n_test)
    base = run.measure(all_test, measurement).to(torch.float64).cpu().numpy()
    size = max(1, round(fraction * run.n_train))
    rng = np.random.default_rng([seed, 4242])
    correlations, agreements = [], []
    for _ in range(num_directions):
        removed = torch.as_tensor(rng.choice(run.n_train, size=size, replace=False))
        changes = []
        for h in (0.5, 1.0):
            weights = run.data_weights.clone()
            weights[removed] = 1 - h
            retrained = train(run.spec, data_weights=weights, keep_checkpoints=False,
                              device=run.device)
            values = retrained.measure(all_test, measurement).to(torch.float64).cpu().numpy()
            changes.append(values - base)
        half, full = changes
        correlation = np.corrcoef(half, full)[0, 1] if half.std() > 0 and full.std() > 0 else 0.0
        correlations.append(float(correlation) if np.isfinite(correlation) else 0.0)
        agreements.append(float(np.mean(np.sign(half) == np.sign(full))))
    score = float(np.mean(correlations))
    result = SmoothnessResult(score=score, sign_agreement=float(np.mean(agreements)),
                              per_direction=correlations, num_directions=num_directions,
                              fraction=fraction, threshold=threshold, smooth=score >= threshold,
                              seconds=time.perf_counter() - started)
    logger.info("smoothness probe: %.3f (sign agreement %.3f) in %.2f s", result.score,
                result.sign_agreement, result.seconds)
    return result
