"""Exact data attribution: MAGIC metagradients through deterministic training.

``scores[q, i]`` is the derivative of test sample q's measurement with respect to
training example i's data weight at w = 1. Removing example i changes the
measurement by about ``-scores[q, i]``. For the loss measurement, a negative
score marks a proponent (the example lowers the test loss) and a positive one
an opponent.
"""

__version__ = "0.1.0"

from . import recipes  # noqa: E402
from .errors import AdjointError, AttributionError, DataError, SpecError, TestIndexError  # noqa: E402
from .lds import LDSResult, evaluate_lds  # noqa: E402
from .metagrad import attribute, attribute_with_stats, predict_removal  # noqa: E402
from .spec import TrainingSpec  # noqa: E402
from .training import (  # noqa: E402
    MEASUREMENTS, TrainingRun, check_test_indices, run_fingerprint, train,
)

__all__ = [
    "AdjointError", "AttributionError", "DataError", "LDSResult", "MEASUREMENTS", "SpecError",
    "TestIndexError", "check_test_indices", "run_fingerprint",
    "TrainingRun", "TrainingSpec", "attribute", "attribute_with_stats", "evaluate_lds",
    "predict_removal", "recipes", "train",
]
