"""Training runs as Ray tasks that write the run to its storage folder."""

from __future__ import annotations

import ray

from service import storage
from service.runs import write_labels


@ray.remote(num_cpus=1, max_retries=0)
def train_run(spec: dict, folder: str, expected_fingerprint: str, probe: bool = True) -> dict:
    """Train ``spec`` and save the run and its labels to ``folder``, a path or fsspec URL.

    The run (spec, metadata, checkpoints) is written to a local staging folder
    first and then moved or uploaded by ``service.storage.publish_run``, so a
    reader never sees half a run. Returns the
    fingerprint, metrics, split sizes and, with ``probe``, the smoothness probe's
    result (4 extra training runs), or its error message if it failed. Raises
    DataError if the trained run's fingerprint differs from the one the service
    derived from spec and dataset.
    """
    import attribution

    run = attribution.train(attribution.TrainingSpec.from_dict(spec))
    if run.fingerprint != expected_fingerprint:
        raise attribution.DataError(
            f"trained run has fingerprint {run.fingerprint[:16]}, expected "
            f"{expected_fingerprint[:16]}; the dataset changed while training"
        )

    partial = storage.staging_folder(folder)
    run.save(partial)
    write_labels(partial, y_train=run.trainer.y_train.numpy(), y_test=run.trainer.y_test.numpy(),
                 texts=_chunk_texts(run))
    storage.publish_run(partial, folder, run.fingerprint)
    return {"fingerprint": run.fingerprint, "metrics": run.metrics,
            "smoothness": _probe(run) if probe else None,
            "n_train": run.n_train, "n_test": run.n_test, "num_steps": run.num_steps}


def _chunk_texts(run) -> tuple[list[str], list[str]] | None:
    """Return the text of every train and test chunk of a language-model run, else None."""
    from attribution.text import decode

    dataset = run.trainer.dataset
    if dataset.task != "language_model":
        return None
    return ([decode(x, dataset.vocab) for x in dataset.x_train],
            [decode(x, dataset.vocab) for x in dataset.x_test])


def _probe(run) -> dict:
    import attribution
    from attribution.smoothness import smoothness_probe

    try:
        return smoothness_probe(run).to_dict()
    except attribution.AttributionError as error:
        return {"error": f"smoothness probe failed: {error}"}
