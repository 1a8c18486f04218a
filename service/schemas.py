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

Measurement = Literal["loss", "margin", "logit"]
TestIndex = Annotated[StrictInt, Field(ge=0)]


class RunCreate(BaseModel):
    """A training run to create from a named recipe."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(description="Recipe name, for example 'mnist-mlp' or 'digits-mlp'.",
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


class JobCreate(BaseModel):
    """An attribution job: the influence scores of test samples of one training run."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(description="A training run id from POST /v1/runs.")
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
    label: int = Field(description="Class label of the training example.")
    score: float = Field(description="Influence score of this training example.")


class TopInfluences(BaseModel):
    test_index: int
    test_label: int
    proponents: list[Influence] = Field(
        description="Training examples that most improve the measurement, strongest first "
                    "(most negative scores for 'loss', most positive for 'margin' and 'logit').")
    opponents: list[Influence] = Field(
        description="Training examples that most worsen the measurement, strongest first.")


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
