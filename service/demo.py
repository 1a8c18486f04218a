"""``magic-attr demo``: MNIST attribution end to end through the embedded service.

Starts a private Redis (append-only file in ``<storage>/redis``) and a local
Ray, and serves the API on a loopback port. It then trains ``mnist-mlp`` as a
Ray task, submits one attribution job through the Python client and prints
each test image's strongest proponents and opponents. Both the run and the scores
persist in the storage folder, so a second demo is served from the cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from .settings import Settings

RECIPE = "mnist-mlp"
TOP_K = 3


def run_demo(settings: Settings, test_samples: int = 16, output: Optional[Path] = None) -> int:
    """Run the demo against a fresh embedded service; return the process exit code."""
    from client import AttributionClient
    from workers.cluster import start_ray, stop_ray

    from .app import create_app
    from .server import BackgroundServer

    output = output or settings.storage_dir / "demo" / "influence.png"
    print(f"storage folder: {settings.storage_dir.resolve()} (runs and the Redis cache)")
    # Ray starts here in the main thread: ray.init installs signal handlers, which
    # only the main thread may do.
    owns_ray = start_ray(settings)
    server = BackgroundServer(create_app(settings))
    try:
        url = server.start()
        print(f"service listening on {url}")
        with AttributionClient(url) as client:
            _attribute(client, settings, test_samples, output)
    finally:
        server.stop()
        if owns_ray:
            stop_ray()
    return 0


def _attribute(client, settings: Settings, test_samples: int, output: Path) -> None:
    started = time.perf_counter()
    created = client.create_run(RECIPE)
    run = client.wait_for_run(created["run_id"])
    if created["status"] == "ready":
        print(f"training run {run['run_id']} ({RECIPE}) found in storage, not retrained")
    else:
        print(f"trained {RECIPE} as run {run['run_id']} in "
              f"{time.perf_counter() - started:.1f} s")
    print(f"test accuracy {run['metrics']['test_accuracy']:.3f} on {run['n_test']} images, "
          f"{run['n_train']} training images")

    job_started = time.perf_counter()
    job_id = client.submit_job(run["run_id"], range(test_samples))
    job = client.wait(job_id)
    job_seconds = time.perf_counter() - job_started
    top = client.top_k(job_id, k=TOP_K)
    scores = client.scores(job_id)  # (test_samples, n_train)

    _print_top(top)
    _write_grid(run, top, scores, output)
    print(f"wrote {output}")
    if job["cached"] == job["progress"]["total"]:
        print(f"job {job_id} took {job_seconds:.2f} s: served from the cache, all "
              f"{job['cached']} test samples cached, no replay work")
    else:
        print(f"job {job_id} took {job_seconds:.2f} s: {job['replayed']} test samples "
              f"replayed, {job['cached']} from the cache")


def _print_top(top: list[dict]) -> None:
    print(f"\nstrongest {TOP_K} proponents (score < 0: lower the test loss) and opponents "
          "per test image, as train index (label) score:")
    for entry in top:
        proponents = ", ".join(_describe(item) for item in entry["proponents"])
        opponents = ", ".join(_describe(item) for item in entry["opponents"])
        print(f"test {entry['test_index']:3d} (label {entry['test_label']})  "
              f"proponents: {proponents}  |  opponents: {opponents}")
    print()


def _describe(item: dict) -> str:
    return f"#{item['train_index']} ({item['label']}) {item['score']:+.2e}"


def _write_grid(run: dict, top: list[dict], scores: np.ndarray, output: Path) -> None:
    """Write one row per test image: the image, its proponents, then its opponents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attribution.data import load_dataset

    spec = run["spec"]
    dataset = load_dataset(spec["dataset"], spec["n_train"], spec["n_test"])
    columns = 1 + 2 * TOP_K
    figure, axes = plt.subplots(len(top), columns, figsize=(1.6 * columns, 1.8 * len(top)),
                                squeeze=False)
    for row, entry in enumerate(top):
        cells = [(dataset.x_test[entry["test_index"]], f"test {entry['test_index']}\n"
                  f"label {entry['test_label']}", "black")]
        for kind, color in (("proponents", "tab:green"), ("opponents", "tab:red")):
            for item in entry[kind]:
                cells.append((dataset.x_train[item["train_index"]],
                              f"#{item['train_index']} ({item['label']})\n"
                              f"{item['score']:+.1e}", color))
        for axis, (image, title, color) in zip(axes[row], cells):
            axis.imshow(np.asarray(image).squeeze(), cmap="gray_r")
            axis.set_title(title, fontsize=7, color=color)
            axis.axis("off")
    figure.suptitle(f"MAGIC influence on the test loss: {TOP_K} proponents (green) and "
                    f"{TOP_K} opponents (red) per test image", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)
