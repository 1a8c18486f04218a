"""Training runs as Ray tasks that write the run to its storage folder."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import ray

from service.runs import write_labels


@ray.remote(num_cpus=1, max_retries=0)
def train_run(spec: dict, folder: str, expected_fingerprint: str) -> dict:
    """Train ``spec`` and save the run and its labels to ``folder``.

    The run (spec, metadata, checkpoints) is written to a temporary sibling
    folder first and renamed, so a reader never sees half a run. Returns the
    fingerprint, metrics and split sizes. Raises DataError if the trained run's
    fingerprint differs from the one the service derived from spec and dataset.
    """
    import attribution

    run = attribution.train(attribution.TrainingSpec.from_dict(spec))
    if run.fingerprint != expected_fingerprint:
        raise attribution.DataError(
            f"trained run has fingerprint {run.fingerprint[:16]}, expected "
            f"{expected_fingerprint[:16]}; the dataset changed while training"
        )

    target = Path(folder)
    partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
    run.save(partial)
    write_labels(partial, y_train=run.trainer.y_train.numpy(), y_test=run.trainer.y_test.numpy())
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return {"fingerprint": run.fingerprint, "metrics": run.metrics,
            "n_train": run.n_train, "n_test": run.n_test, "num_steps": run.num_steps}
