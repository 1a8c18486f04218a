"""The FastAPI application: training runs, attribution jobs, scores and health.

Routes stay thin: they validate, read or write records through ``Store`` and
hand work to a backend (``workers.coordinator.RayBackend`` in production, a
fake in unit tests). Sign convention of the scores: see ``service.schemas``.
"""

from __future__ import annotations

import io
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable, Literal, Optional, Protocol

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import metrics, runs, storage
from .auth import APIKeyMiddleware, KeyRing, add_security_schemes, request_owner, require_owner
from .embedded import EmbeddedRedis
from .limits import BodyLimitMiddleware, cap_errors, document_body_limit
from .keys import JobStatus, RunStatus, score_arguments
from .schemas import (ComponentHealth, EvaluationCreate, EvaluationCreated, EvaluationPublic,
                      EvaluationResult, Health, Influence, JobCreate, JobCreated, JobPublic,
                      PredictionCreate, PredictionPublic, Progress, RunCreate, RunCreated,
                      RunPublic, ScoresPublic, TopInfluences, TopKPublic)
from .settings import Settings, redact_url
from .store import CacheMismatchError, Store

logger = logging.getLogger(__name__)

RETRY_TRAINING_S = 5
RETRY_JOB_S = 2
RESTART_MESSAGE = "the service restarted before this finished; submit it again"


class Backend(Protocol):
    """Interface of the compute side that the routes call."""

    def submit_training(self, run_id: str, spec: dict, fingerprint: str) -> None: ...
    def submit_job(self, job_id: str) -> None: ...
    def submit_evaluation(self, evaluation_id: str) -> None: ...
    def retrain(self, folder: Any, removed: list[int], measurement: str) -> np.ndarray: ...
    def health(self) -> dict: ...
    def shutdown(self, timeout: float = 30.0) -> None: ...


BackendFactory = Callable[[Settings, Store, str], Backend]


class FieldError(HTTPException):
    """A 422 whose body names the invalid field like FastAPI's own validation errors.

    ``source`` is where the field is: "body" or "query".
    """

    def __init__(self, location: list[Any], message: str, source: str = "body") -> None:
        super().__init__(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[
            {"type": "value_error", "loc": [source, *location], "msg": message}])


def _ray_backend(settings: Settings, store: Store, redis_url: str) -> Backend:
    from workers.coordinator import start_backend

    return start_backend(settings, store, redis_url)


def create_app(settings: Optional[Settings] = None,
               backend_factory: BackendFactory = _ray_backend) -> FastAPI:
    """Build the application; Redis and Ray start in its lifespan, not here."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        embedded = None
        redis_url = settings.redis_url
        if redis_url is None:
            embedded = EmbeddedRedis(settings.redis_dir)
            redis_url = embedded.start()
        store = Store.from_url(redis_url, score_ttl_s=settings.score_ttl_s,
                               job_ttl_s=settings.job_ttl_s, retry_s=settings.redis_retry_s)
        if embedded is not None:
            _recover_private_redis(store)
        backend = backend_factory(settings, store, redis_url)
        app.state.settings, app.state.store, app.state.backend = settings, store, backend
        app.state.redis_url = redis_url
        logger.info("service ready: Redis %s, storage %s", redact_url(redis_url),
                    settings.storage_dir.resolve())
        try:
            yield
        finally:
            backend.shutdown()
            store.close()
            if embedded is not None:
                embedded.stop()
            logger.info("service stopped")

    app = FastAPI(title="MAGIC data attribution", version="1", lifespan=lifespan,
                  description=__doc__.split("\n\n")[0] + "\n\n" + _SIGN_CONVENTION)
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    metrics.install(app)
    _install_limits_and_keys(app, settings)
    return app


def _install_limits_and_keys(app: FastAPI, settings: Settings) -> None:
    """Add the body-size limit and, with MAGIC_API_KEYS set, API-key authentication.

    The middleware added last runs first, so a request without a valid key is
    rejected before its body is read.
    """
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    key_ring = KeyRing(settings.api_keys)
    if key_ring.enabled:
        app.add_middleware(APIKeyMiddleware, key_ring=key_ring)
    build_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = document_body_limit(build_openapi(), settings.max_body_bytes)
            app.openapi_schema = add_security_schemes(schema) if key_ring.enabled else schema
        return app.openapi_schema

    app.openapi = openapi


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Return 422 with the errors, with rejected NaN or infinite inputs written as strings.

    FastAPI's default handler echoes each rejected input, and JSON cannot carry NaN,
    so a body such as ``{"test_indices": [NaN]}`` would otherwise end in a 500. At
    most ``limits.MAX_LISTED_ERRORS`` errors are listed, followed by their count.
    """
    errors = cap_errors(list(error.errors()))
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                        content={"detail": _json_safe(jsonable_encoder(errors))})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


_SIGN_CONVENTION = (
    "scores[q][i] is the derivative of test sample q's measurement with respect to "
    "training example i's data weight at weight 1; removing example i changes the "
    "measurement by about -scores[q][i]. For the loss, negative scores mark proponents."
)


def _recover_private_redis(store: Store) -> None:
    """Prepare work left unfinished by a previous process on this private Redis.

    No other process uses a private Redis, so the leases of the previous one are
    dropped and the backend resumes its jobs and training runs at once.
    Evaluations are not resumed; they are marked failed.
    """
    store.clear_leases()
    for evaluation_id in store.active_evaluation_ids():
        store.transition_evaluation(evaluation_id, (JobStatus.QUEUED, JobStatus.RUNNING),
                                    JobStatus.FAILED, error=RESTART_MESSAGE,
                                    finished_at=time.time())


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
# The owner id of the caller's API key, or None when authentication is off.
OwnerDep = Annotated[Optional[str], Depends(request_owner)]
BackendDep = Annotated[Backend, Depends(get_backend)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


router = APIRouter()


# ------------------------------------------------------------------ health
@router.get("/healthz", response_model=Health)
def healthz(store: StoreDep, backend: BackendDep) -> JSONResponse:
    """Report whether Redis replies to PING and Ray is connected; 503 if either is down."""
    try:
        redis_health = ComponentHealth(ok=store.ping())
    except Exception as error:  # noqa: BLE001 - any Redis failure is reported, not raised
        redis_health = ComponentHealth(ok=False, detail={"error": str(error)})
    ray_detail = backend.health()
    ray_health = ComponentHealth(ok=bool(ray_detail.pop("ok", False)), detail=ray_detail)
    ok = redis_health.ok and ray_health.ok
    body = Health(status="ok" if ok else "degraded", redis=redis_health, ray=ray_health)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


# -------------------------------------------------------------------- runs
@router.post("/v1/runs", response_model=RunCreated,
             status_code=status.HTTP_202_ACCEPTED)
def create_run(body: RunCreate, response: Response, store: StoreDep, backend: BackendDep,
               settings: SettingsDep, owner: OwnerDep) -> RunCreated:
    """Create a training run from a recipe and train it in the background.

    The same recipe and overrides always give the same run id (per API key when
    keys are configured). An existing ready run is returned as is (200), and a
    failed one is trained again (202).
    """
    import attribution

    if body.recipe not in attribution.recipes.names():
        raise FieldError(["recipe"], f"unknown recipe {body.recipe!r}; available recipes: "
                                     f"{attribution.recipes.names()}")
    try:
        spec = runs.resolve_spec(body.recipe, body.overrides)
        fingerprint = runs.run_fingerprint(spec)
    except attribution.AttributionError as error:
        raise FieldError(["overrides"], str(error)) from None
    run_id = runs.run_id_from_fingerprint(fingerprint, owner)

    existing = store.get_run(run_id)
    folder = storage.run_location(settings, run_id)
    if existing and existing["status"] == RunStatus.READY.value and not storage.run_exists(folder):
        store.finish_run(run_id, RunStatus.FAILED, error=f"run folder {folder} is missing")
    if store.start_run(run_id, body.recipe, body.overrides, spec.to_dict(),
                       n_train=spec.n_train, n_test=spec.n_test, owner=owner):
        backend.submit_training(run_id, spec.to_dict(), fingerprint)
        logger.info("training run %s submitted (recipe %s)", run_id, body.recipe)
    else:
        response.status_code = status.HTTP_200_OK
    return RunCreated(run_id=run_id, status=store.get_run(run_id)["status"])


@router.get("/v1/runs/{run_id}", response_model=RunPublic)
def read_run(run_id: str, store: StoreDep, owner: OwnerDep) -> RunPublic:
    """Return a training run's status, spec, split sizes and metrics."""
    record = _require_run(store, run_id)
    require_owner(record, owner, f"training run {run_id}")
    smoothness = record.get("smoothness")
    warnings = [smoothness["warning"]] if smoothness and smoothness.get("warning") else []
    return RunPublic(**{**record, "error": record.get("error") or None, "warnings": warnings})


def _require_run(store: Store, run_id: str) -> dict:
    record = store.get_run(run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"training run {run_id!r} not found; create it with "
                                   "POST /v1/runs")
    return record


# -------------------------------------------------------------------- jobs
@router.post("/v1/jobs", response_model=JobCreated,
             status_code=status.HTTP_202_ACCEPTED)
def submit_job(body: JobCreate, response: Response, store: StoreDep, backend: BackendDep,
               settings: SettingsDep, owner: OwnerDep) -> JobCreated:
    """Submit an attribution job for test samples of a ready training run.

    Returns 202 with a queued job, or 200 when no new work is needed. That is the
    case when every score vector is cached, so the job is created as succeeded,
    and when a queued or running job has the same inputs, whose id is returned.
    """
    import attribution

    run = _require_run(store, body.run_id)
    require_owner(run, owner, f"training run {body.run_id}")
    _require_ready(run)
    if len(body.test_indices) > settings.max_test_samples:
        raise FieldError(["test_indices"],
                         f"{len(body.test_indices)} test indices exceed the limit of "
                         f"{settings.max_test_samples} per job; split the job")
    _check_score_matrix(len(body.test_indices), run, settings)
    for q, index in enumerate(body.test_indices):
        if index >= run["n_test"]:
            raise FieldError(["test_indices", q],
                             f"test index {index} is out of range; run {body.run_id} has "
                             f"{run['n_test']} test samples (valid indices 0..{run['n_test'] - 1})")
    job_id = uuid.uuid4().hex
    fields = {
        "job_id": job_id, "run_id": body.run_id, "measurement": body.measurement,
        "test_indices": body.test_indices, "total": len(body.test_indices),
        "engine_version": attribution.__version__, "owner": owner or "",
    }
    arguments = [score_arguments(run["fingerprint"], index, body.measurement,
                                 attribution.__version__) for index in body.test_indices]
    if not store.missing_scores(arguments):
        # Every score vector is cached: the job is final at once, with no queue or worker.
        now = time.time()
        store.create_finished_job(job_id, {
            **fields, "status": JobStatus.SUCCEEDED.value, "done": len(arguments),
            "cached": len(arguments), "replayed": 0, "started_at": now, "finished_at": now,
        })
        response.status_code = status.HTTP_200_OK
        logger.info("job %s served from the cache: %d test samples", job_id, len(arguments))
        return JobCreated(job_id=job_id, status=JobStatus.SUCCEEDED)

    if store.active_job_count() >= settings.max_active_jobs:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail=f"{settings.max_active_jobs} jobs are queued or running, "
                                   "the configured maximum; retry later",
                            headers={"Retry-After": str(RETRY_JOB_S)})
    store.create_job(job_id, fields)
    inputs = {name: value for name, value in fields.items() if name != "job_id"}
    running = store.join_or_reserve(inputs, job_id)
    if running is not None:
        # The same inputs are queued or running: join that job instead of computing twice.
        store.delete_job(job_id)
        response.status_code = status.HTTP_200_OK
        logger.info("submission joined job %s, which has the same inputs", running)
        return JobCreated(job_id=running, status=store.job_status(running) or JobStatus.QUEUED)
    backend.submit_job(job_id)
    logger.info("job %s submitted: run %s, %d test samples, measurement %s", job_id,
                body.run_id, len(body.test_indices), body.measurement)
    return JobCreated(job_id=job_id, status=JobStatus.QUEUED)


def _require_ready(run: dict) -> None:
    if run["status"] == RunStatus.TRAINING.value:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"training run {run['run_id']} is still training; retry in "
                                   f"{RETRY_TRAINING_S} s",
                            headers={"Retry-After": str(RETRY_TRAINING_S)})
    if run["status"] == RunStatus.FAILED.value:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"training run {run['run_id']} failed: {run.get('error')}; "
                                   "POST /v1/runs with the same recipe and overrides to train "
                                   "it again")


@router.get("/v1/jobs/{job_id}", response_model=JobPublic)
def read_job(job_id: str, store: StoreDep, owner: OwnerDep) -> JobPublic:
    """Return an attribution job's status and progress."""
    return _job_public(_require_job(store, job_id, owner))


@router.delete("/v1/jobs/{job_id}", response_model=JobPublic)
def cancel_job(job_id: str, store: StoreDep, owner: OwnerDep) -> JobPublic:
    """Cancel a queued or running job; its replay workers stop within one batch."""
    job = _require_job(store, job_id, owner)
    cancelled = store.transition_job(job_id, (JobStatus.QUEUED, JobStatus.RUNNING),
                                     JobStatus.CANCELLED, finished_at=time.time())
    if not cancelled:
        job = _require_job(store, job_id)
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"job {job_id} already {job['status'].value}; "
                                   "only queued or running jobs can be cancelled")
    logger.info("job %s cancelled after %.2f s", job_id, time.time() - job["created_at"])
    return _job_public(_require_job(store, job_id))


def _require_job(store: Store, job_id: str, owner: Optional[str] = None) -> dict:
    """Return the job record; raise 404 if unknown and 403 if ``owner`` did not create it."""
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"attribution job {job_id!r} not found; it may have expired")
    require_owner(job, owner, f"attribution job {job_id}")
    return job


def _job_public(job: dict) -> JobPublic:
    end = job["finished_at"] or time.time()
    return JobPublic(
        job_id=job["job_id"], run_id=job["run_id"], status=job["status"],
        measurement=job["measurement"], progress=Progress(done=job["done"], total=job["total"]),
        cached=job["cached"], replayed=job["replayed"], error=job.get("error") or None,
        created_at=job["created_at"], started_at=job["started_at"],
        finished_at=job["finished_at"], elapsed_s=end - job["created_at"],
    )


# ------------------------------------------------------------------ scores
@router.get("/v1/jobs/{job_id}/scores", response_model=ScoresPublic | TopKPublic,
            responses={200: {"content": {"application/x-npy": {}}}})
def read_scores(
    job_id: str,
    store: StoreDep,
    settings: SettingsDep,
    owner: OwnerDep,
    top_k: Annotated[Optional[int], Query(ge=1, description=(
        "Return the N strongest proponents and opponents of each test sample, with "
        "labels, instead of the full matrix."))] = None,
    format: Annotated[Literal["json", "npy"], Query(description=(
        "'json' (default) or 'npy': the (k, n_train) matrix as a NumPy .npy file."))] = "json",
):
    """Return a finished job's influence scores: full matrix, .npy file or top-k."""
    job = _require_job(store, job_id, owner)
    _require_succeeded(job)
    if top_k is not None and format == "npy":
        raise FieldError(["top_k"], "top_k and format=npy cannot be combined; the .npy file "
                                    "always holds the full matrix", source="query")
    run = _require_run(store, job["run_id"])
    matrix = _read_matrix(store, job, run)  # (k, n_train)

    if format == "npy":
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        return Response(buffer.getvalue(), media_type="application/x-npy")
    if top_k is not None:
        if top_k > run["n_train"]:
            raise FieldError(["top_k"], f"top_k={top_k} exceeds the {run['n_train']} training "
                                        "examples of the run", source="query")
        folder = storage.run_location(settings, job["run_id"])
        return _top_k(job, matrix, runs.read_labels(folder), runs.read_texts(folder), top_k)
    return ScoresPublic(job_id=job_id, measurement=job["measurement"],
                        test_indices=job["test_indices"], n_train=run["n_train"],
                        scores=matrix.tolist())


def _require_succeeded(job: dict) -> None:
    if job["status"] in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"job {job['job_id']} is {job['status'].value} "
                                   f"({job['done']}/{job['total']} done); retry in "
                                   f"{RETRY_JOB_S} s",
                            headers={"Retry-After": str(RETRY_JOB_S)})
    if job["status"] != JobStatus.SUCCEEDED:
        reason = f": {job['error']}" if job.get("error") else ""
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"job {job['job_id']} {job['status'].value}{reason}; it has "
                                   "no scores, submit it again")


def _read_matrix(store: Store, job: dict, run: dict) -> np.ndarray:
    vectors = []
    for index in job["test_indices"]:
        arguments = score_arguments(run["fingerprint"], index, job["measurement"],
                                    job["engine_version"])
        try:
            vector = store.get_scores(arguments)
        except CacheMismatchError as error:
            logger.error("job %s: %s", job["job_id"], error)
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(error))
        if vector is None:
            raise HTTPException(status.HTTP_410_GONE,
                                detail=f"the cached scores of test sample {index} expired; "
                                       "submit the job again to recompute them")
        vectors.append(vector)
    return np.stack(vectors)


def _top_k(job: dict, matrix: np.ndarray, labels: tuple[np.ndarray, np.ndarray],
           texts: Optional[tuple[np.ndarray, np.ndarray]], k: int) -> TopKPublic:
    """Strongest proponents and opponents per test sample, with labels or chunk texts."""
    y_train, y_test = labels
    # For the loss, lower is better, so proponents have the most negative scores.
    sign = 1.0 if job["measurement"] == "loss" else -1.0

    def describe(index: int, split: str) -> dict:
        if texts is not None:
            return {"text": str(texts[0 if split == "train" else 1][index])}
        return {"label": int((y_train if split == "train" else y_test)[index])}

    top = []
    for q, test_index in enumerate(job["test_indices"]):
        order = np.argsort(sign * matrix[q], kind="stable")
        test = {f"test_{key}": value for key, value in describe(test_index, "test").items()}
        top.append(TopInfluences(
            test_index=test_index, **test,
            # A proponent must help and an opponent hurt, so with k near n_train each
            # list stops where the scores change sign.
            proponents=[Influence(train_index=int(i), score=float(matrix[q][i]),
                                  **describe(i, "train"))
                        for i in order[:k] if sign * matrix[q][i] < 0],
            opponents=[Influence(train_index=int(i), score=float(matrix[q][i]),
                                 **describe(i, "train"))
                       for i in order[::-1][:k] if sign * matrix[q][i] > 0],
        ))
    return TopKPublic(job_id=job["job_id"], measurement=job["measurement"], top_k=k, top=top)


# ------------------------------------------------------------- evaluations
@router.post("/v1/evaluations", response_model=EvaluationCreated,
             status_code=status.HTTP_202_ACCEPTED)
def submit_evaluation(body: EvaluationCreate, store: StoreDep, backend: BackendDep,
                      settings: SettingsDep, owner: OwnerDep) -> EvaluationCreated:
    """Submit an evaluation: LDS of the chosen methods, retraining random subsets on Ray."""
    run = _require_run(store, body.run_id)
    require_owner(run, owner, f"training run {body.run_id}")
    _require_ready(run)
    _check_test_indices(body.test_indices, run, settings)
    for q, fraction in enumerate(body.fractions):
        if round(fraction * run["n_train"]) < 1:
            raise FieldError(["fractions", q], f"drop fraction {fraction} removes no example of "
                                               f"{run['n_train']}; raise it")
    if body.trak_proj_dim is not None and body.trak_proj_dim > run["n_train"] // 2:
        raise FieldError(["trak_proj_dim"], f"trak_proj_dim={body.trak_proj_dim} must be at "
                                            f"most n_train / 2 = {run['n_train'] // 2}")
    if store.active_evaluation_count() >= settings.max_active_jobs:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail=f"{settings.max_active_jobs} evaluations are queued or "
                                   "running, the configured maximum; retry later",
                            headers={"Retry-After": str(RETRY_JOB_S)})

    evaluation_id = uuid.uuid4().hex
    options = {"trak": {"proj_dim": body.trak_proj_dim}} if body.trak_proj_dim else {}
    store.create_evaluation(evaluation_id, {
        "evaluation_id": evaluation_id, "run_id": body.run_id,
        "test_indices": body.test_indices, "fractions": body.fractions,
        "num_subsets": body.num_subsets, "methods": body.methods, "seed": body.seed,
        "measurement": body.measurement, "options": options,
        "total": len(body.fractions) * body.num_subsets + len(body.methods),
        "owner": owner or "",
    })
    backend.submit_evaluation(evaluation_id)
    logger.info("evaluation %s submitted: run %s, methods %s, %d test samples", evaluation_id,
                body.run_id, body.methods, len(body.test_indices))
    return EvaluationCreated(evaluation_id=evaluation_id, status=JobStatus.QUEUED)


def _check_test_indices(indices: list[int], run: dict, settings: Settings) -> None:
    if len(indices) > settings.max_test_samples:
        raise FieldError(["test_indices"],
                         f"{len(indices)} test indices exceed the limit of "
                         f"{settings.max_test_samples}; split the request")
    for q, index in enumerate(indices):
        if index >= run["n_test"]:
            raise FieldError(["test_indices", q],
                             f"test index {index} is out of range; run {run['run_id']} has "
                             f"{run['n_test']} test samples (valid indices 0..{run['n_test'] - 1})")
    _check_score_matrix(len(indices), run, settings)


def _check_score_matrix(num_samples: int, run: dict, settings: Settings) -> None:
    """Raise 422 if ``num_samples`` rows of the run's scores exceed MAGIC_MAX_SCORE_VALUES."""
    values = num_samples * run["n_train"]
    if values > settings.max_score_values:
        max_samples = max(1, settings.max_score_values // run["n_train"])
        raise FieldError(["test_indices"],
                         f"the score matrix of {num_samples} test samples x {run['n_train']} "
                         f"training examples has {values} values, over the limit of "
                         f"{settings.max_score_values} (MAGIC_MAX_SCORE_VALUES); send at most "
                         f"{max_samples} test samples per request for this run")


@router.get("/v1/evaluations/{evaluation_id}", response_model=EvaluationPublic)
def read_evaluation(evaluation_id: str, store: StoreDep, owner: OwnerDep) -> EvaluationPublic:
    """Return an evaluation's status and progress (retrainings and methods done)."""
    return _evaluation_public(_require_evaluation(store, evaluation_id, owner))


@router.delete("/v1/evaluations/{evaluation_id}", response_model=EvaluationPublic)
def cancel_evaluation(evaluation_id: str, store: StoreDep, owner: OwnerDep) -> EvaluationPublic:
    """Cancel a queued or running evaluation; its Ray tasks are cancelled."""
    record = _require_evaluation(store, evaluation_id, owner)
    if not store.transition_evaluation(evaluation_id, (JobStatus.QUEUED, JobStatus.RUNNING),
                                       JobStatus.CANCELLED, finished_at=time.time()):
        record = _require_evaluation(store, evaluation_id)
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"evaluation {evaluation_id} already "
                                   f"{record['status'].value}; only queued or running "
                                   "evaluations can be cancelled")
    logger.info("evaluation %s cancelled after %.2f s", evaluation_id,
                time.time() - record["created_at"])
    return _evaluation_public(_require_evaluation(store, evaluation_id))


@router.get("/v1/evaluations/{evaluation_id}/result", response_model=EvaluationResult)
def read_evaluation_result(evaluation_id: str, store: StoreDep,
                           owner: OwnerDep) -> EvaluationResult:
    """Return LDS per method, fraction and test sample, with predicted and true changes."""
    record = _require_evaluation(store, evaluation_id, owner)
    _require_succeeded({**record, "job_id": evaluation_id})
    result = store.get_evaluation_result(evaluation_id)
    if result is None:
        raise HTTPException(status.HTTP_410_GONE,
                            detail=f"the result of evaluation {evaluation_id} expired; "
                                   "submit it again (retrained subsets are reused)")
    return EvaluationResult(**result)


def _require_evaluation(store: Store, evaluation_id: str, owner: Optional[str] = None) -> dict:
    """Return the evaluation record; raise 404 if unknown and 403 if ``owner`` did not create it."""
    record = store.get_evaluation(evaluation_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"evaluation {evaluation_id!r} not found; it may have expired")
    require_owner(record, owner, f"evaluation {evaluation_id}")
    return record


def _evaluation_public(record: dict) -> EvaluationPublic:
    end = record["finished_at"] or time.time()
    return EvaluationPublic(
        evaluation_id=record["evaluation_id"], run_id=record["run_id"],
        status=record["status"], progress=Progress(done=record["done"], total=record["total"]),
        retrained=record["retrained"], reused=record["reused"],
        error=record.get("error") or None, created_at=record["created_at"],
        started_at=record["started_at"], finished_at=record["finished_at"],
        elapsed_s=end - record["created_at"])


# ------------------------------------------------------------- predictions
@router.post("/v1/predictions", response_model=PredictionPublic)
def predict(body: PredictionCreate, store: StoreDep, backend: BackendDep,
            settings: SettingsDep, owner: OwnerDep) -> PredictionPublic:
    """Predict the change of test measurements when training examples are removed.

    Uses the cached MAGIC scores of the test samples (submit an attribution job
    first). With ``verify`` it also retrains without the examples, which takes
    one training run.
    """
    import attribution

    run = _require_run(store, body.run_id)
    require_owner(run, owner, f"training run {body.run_id}")
    _require_ready(run)
    _check_test_indices(body.test_indices, run, settings)
    for q, index in enumerate(body.removed):
        if index >= run["n_train"]:
            raise FieldError(["removed", q], f"training index {index} is out of range; run "
                                             f"{body.run_id} has {run['n_train']} training "
                                             "examples")
    matrix = _cached_rows(store, run, body.test_indices, body.measurement,
                          attribution.__version__)
    predicted = -matrix[:, body.removed].sum(axis=1)
    response = PredictionPublic(run_id=body.run_id, test_indices=body.test_indices,
                                measurement=body.measurement,
                                predicted_change=predicted.tolist())
    if body.verify:
        folder = storage.run_location(settings, body.run_id)
        local_folder = storage.local_run_folder(folder, run["fingerprint"])
        full = attribution.TrainingRun.load(local_folder).measure(range(run["n_test"]),
                                                            body.measurement)
        base = full.double().numpy()[body.test_indices]
        try:
            retrained = backend.retrain(folder, body.removed, body.measurement)
        except TimeoutError as error:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, detail=str(error)) from None
        response.base = base.tolist()
        response.actual_change = (np.asarray(retrained)[body.test_indices] - base).tolist()
    logger.info("prediction on run %s: %d test samples, %d removed examples, verify %s, "
                "owner %s", body.run_id, len(body.test_indices), len(body.removed), body.verify,
                owner or "none")
    return response


def _cached_rows(store: Store, run: dict, indices: list[int], measurement: str,
                 engine_version: str) -> np.ndarray:
    rows, missing = [], []
    for index in indices:
        vector = store.get_scores(score_arguments(run["fingerprint"], index, measurement,
                                                  engine_version))
        if vector is None:
            missing.append(index)
        else:
            rows.append(vector.astype(np.float64))
    if missing:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"test samples {missing[:10]} have no cached {measurement} "
                                   "scores; submit them with POST /v1/jobs first")
    return np.stack(rows)
