"""Request and response models of the REST API, shared by the routes and the tests.

Sign convention of every score in these models: ``scores[q, i]`` is the
derivative of test sample q's measurement with respect to training example i's
data weight, at weight 1. Removing example i changes the measurement by about
``-scores[q, i]``. For the loss measurement a negative score marks a proponent
(the example lowers the test loss) and a positive score an opponent. For the
margin and logit measurements the signs are the other way round.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from .keys import JobStatus, RunStatus

# Request bodies reject unknown fields, and strict mode rejects values of another JSON
# type instead of converting them: "3" or 3.0 for an integer, 1 or "yes" for a boolean.
REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)
# Maximum length of a recipe name or run id, so an error message never echoes a huge string.
MAX_NAME_LENGTH = 128

Measurement = Literal["loss", "margin", "logit"]
TestIndex = Annotated[StrictInt, Field(ge=0)]


class RunCreate(BaseModel):
    """A training run to create from a named recipe."""

    model_config = REQUEST_CONFIG

    recipe: str = Field(max_length=MAX_NAME_LENGTH,
                        description="Recipe name, for example 'mnist-mlp' or 'digits-mlp'.",
                        examples=["mnist-mlp"])
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Training spec fields to override, for example {\"epochs\": 2}.",
        examples=[{"epochs": 2}],
    )


class RunCreated(BaseModel):
    run_id: str = Field(description="Training run id; the same spec always gets the same id.")
    status: RunStatus


class RunPublic(BaseModel):
    """A training run and, once trained, its metrics."""

    run_id: str
    status: RunStatus = Field(description="'training', 'ready' or 'failed'.")
    recipe: str
    overrides: dict[str, Any]
    spec: dict[str, Any] = Field(description="The full training spec after overrides.")
    n_train: int = Field(description="Number of training examples (columns of the scores).")
    n_test: int = Field(description="Number of test samples; valid test indices are 0..n_test-1.")
    fingerprint: Optional[str] = Field(
        default=None, description="SHA-256 of the canonical spec and the dataset's content.")
    metrics: Optional[dict[str, float]] = Field(
        default=None, description="test_accuracy, test_loss, final_train_loss, train_seconds.")
    error: Optional[str] = Field(default=None, description="Why training failed.")
    smoothness: Optional[dict[str, Any]] = Field(
        default=None,
        description="Smoothness probe: 'score' near 1 means removing training examples "
                    "changes test losses almost linearly, so influence scores can be trusted; "
                    "'warning' explains a low score.")
    warnings: list[str] = Field(default_factory=list,
                                description="Plain-language warnings about this run.")


def _reject_duplicates(name: str, values: list[int]) -> list[int]:
    seen: set[int] = set()
    duplicated: set[int] = set()
    for value in values:
        if value in seen:
            duplicated.add(value)
        seen.add(value)
    if duplicated:
        raise ValueError(f"{name} {sorted(duplicated)[:10]} are duplicated; list each once")
    return values


class JobCreate(BaseModel):
    """An attribution job: the influence scores of test samples of one training run."""

    model_config = REQUEST_CONFIG

    run_id: str = Field(max_length=MAX_NAME_LENGTH,
                        description="A training run id from POST /v1/runs.")
    test_indices: list[TestIndex] = Field(
        min_length=1, description="Indices into the run's test split, without duplicates.",
        examples=[[0, 1, 2, 3]],
    )
    measurement: Measurement = Field(
        default="loss",
        description="What is differentiated per test sample: 'loss' (cross-entropy), "
                    "'margin' (correct logit minus log-sum-exp of the others) or 'logit' "
                    "(the correct class's logit).",
    )

    @field_validator("test_indices")
    @classmethod
    def _reject_duplicates(cls, indices: list[int]) -> list[int]:
        seen: set[int] = set()
        duplicated: set[int] = set()
        for index in indices:
            if index in seen:
                duplicated.add(index)
            seen.add(index)
        if duplicated:
            duplicated = sorted(duplicated)
            raise ValueError(f"test indices {duplicated[:10]} are duplicated; list each once")
        return indices


class JobCreated(BaseModel):
    job_id: str
    status: JobStatus


class Progress(BaseModel):
    done: int = Field(description="Test samples whose score vector is stored.")
    total: int = Field(description="Test samples in the job.")


class JobPublic(BaseModel):
    """Status and progress of an attribution job."""

    job_id: str
    run_id: str
    status: JobStatus = Field(
        description="'queued', 'running', 'succeeded', 'failed' or 'cancelled'.")
    measurement: Measurement
    progress: Progress
    cached: int = Field(description="Test samples whose scores came from the cache, without replay.")
    replayed: int = Field(description="Test samples computed by replay workers for this job.")
    error: Optional[str] = Field(default=None, description="Why the job failed.")
    created_at: float = Field(description="Submission time, seconds since the Unix epoch.")
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    elapsed_s: Optional[float] = Field(
        default=None, description="Seconds from submission to the end, or to now if running.")


class ScoresPublic(BaseModel):
    """The full score matrix of a job, shape (len(test_indices), n_train)."""

    job_id: str
    measurement: Measurement
    test_indices: list[int]
    n_train: int
    scores: list[list[float]] = Field(
        description="scores[q][i] = d measurement of test_indices[q] / d weight of training "
                    "example i; removing example i changes the measurement by about "
                    "-scores[q][i].")


class Influence(BaseModel):
    train_index: int = Field(description="Index into the run's training split.")
    label: Optional[int] = Field(
        default=None, description="Class label of the training example (image recipes).")
    text: Optional[str] = Field(
        default=None, description="Text of the training chunk (language-model recipes).")
    score: float = Field(description="Influence score of this training example.")


class TopInfluences(BaseModel):
    test_index: int
    test_label: Optional[int] = Field(default=None, description="Class label (image recipes).")
    test_text: Optional[str] = Field(default=None,
                                     description="Text of the test chunk (language-model recipes).")
    proponents: list[Influence] = Field(
        description="Up to top_k training examples that improve the measurement, strongest "
                    "first (negative scores for 'loss', positive for 'margin' and 'logit').")
    opponents: list[Influence] = Field(
        description="Up to top_k training examples that worsen the measurement, strongest "
                    "first.")


class TopKPublic(BaseModel):
    job_id: str
    measurement: Measurement
    top_k: int
    top: list[TopInfluences]


class ComponentHealth(BaseModel):
    ok: bool
    detail: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: ComponentHealth
    ray: ComponentHealth


Method = Literal["magic", "trak", "ekfac", "tracin"]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class EvaluationCreate(BaseModel):
    """An evaluation job: LDS of several methods on one training run."""

    model_config = REQUEST_CONFIG

    run_id: str = Field(max_length=MAX_NAME_LENGTH,
                        description="A ready training run id from POST /v1/runs.")
    test_indices: list[TestIndex] = Field(min_length=1, description="Test samples to score.",
                                          examples=[[0, 1, 2, 3]])
    fractions: list[Fraction] = Field(default=[0.01, 0.05, 0.1], min_length=1,
                                      description="Drop fractions of the training set.")
    num_subsets: int = Field(default=50, ge=3, le=1000,
                             description="Random subsets retrained per fraction (50 or more "
                                         "for a stable estimate).")
    methods: list[Method] = Field(default=["magic"], min_length=1,
                                  description="Methods to compare.")
    measurement: Literal["loss", "margin"] = Field(default="loss")
    seed: int = Field(default=0, ge=0, description="Seed of the subset draw.")
    trak_proj_dim: Optional[int] = Field(default=None, ge=1,
                                         description="TRAK's projection dimension "
                                                     "(default n_train / 16, clipped to 8..512).")

    @field_validator("test_indices")
    @classmethod
    def _unique_indices(cls, indices: list[int]) -> list[int]:
        return _reject_duplicates("test indices", indices)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods {methods} list a method twice; list each once")
        return methods

    @field_validator("fractions")
    @classmethod
    def _unique_fractions(cls, fractions: list[float]) -> list[float]:
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"fractions {fractions} list a fraction twice; list each once")
        return fractions


class EvaluationCreated(BaseModel):
    evaluation_id: str
    status: JobStatus


class EvaluationPublic(BaseModel):
    """Status and progress of an evaluation job; progress counts retrainings and methods."""

    evaluation_id: str
    run_id: str
    status: JobStatus
    progress: Progress
    retrained: int = Field(description="Subsets retrained for this evaluation.")
    reused: int = Field(description="Subsets whose retrained measurements were stored earlier.")
    error: Optional[str] = None
    created_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    elapsed_s: Optional[float] = None


class EvaluationResult(BaseModel):
    """LDS per method and fraction, per test sample, and predicted against true changes."""

    evaluation_id: str
    run_id: str
    test_indices: list[int]
    fractions: list[float]
    num_subsets: int
    seed: int
    measurement: str
    lds: dict[str, dict[str, float]] = Field(description="LDS keyed by method, then fraction.")
    per_sample: dict[str, dict[str, list[float]]] = Field(
        description="Spearman correlation per test sample, keyed by method, then fraction.")
    changes: dict[str, dict[str, dict[str, list[list[float]]]]] = Field(
        description="Keyed by method, then fraction: 'predicted' and 'actual' changes of the "
                    "measurement, each num_subsets x len(test_indices).")
    failed: dict[str, str] = Field(description="Error message of each method that failed.")
    seconds: dict[str, float] = Field(description="Seconds each method took to score.")


class PredictionCreate(BaseModel):
    """Predict how removing training examples changes test measurements."""

    model_config = REQUEST_CONFIG

    run_id: str = Field(max_length=MAX_NAME_LENGTH)
    test_indices: list[TestIndex] = Field(min_length=1)
    removed: list[Annotated[StrictInt, Field(ge=0)]] = Field(
        min_length=1, description="Training examples to remove (weight 0).")
    measurement: Measurement = "loss"
    verify: bool = Field(default=False,
                         description="Also retrain without the removed examples and return "
                                     "the true change (one training run).")

    @field_validator("test_indices")
    @classmethod
    def _unique_indices(cls, indices: list[int]) -> list[int]:
        return _reject_duplicates("test indices", indices)

    @field_validator("removed")
    @classmethod
    def _unique_removed(cls, removed: list[int]) -> list[int]:
        return _reject_duplicates("removed indices", removed)


class PredictionPublic(BaseModel):
    run_id: str
    test_indices: list[int]
    measurement: Measurement
    predicted_change: list[float] = Field(
        description="MAGIC's first-order prediction, -sum of the removed examples' scores.")
    actual_change: Optional[list[float]] = Field(
        default=None, description="Measured change after retraining (only with verify).")
    base: Optional[list[float]] = Field(default=None,
                                        description="Measurements of the full run (with verify).")
