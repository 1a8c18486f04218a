"""Service overhead, cached-job latency and throughput with 1 and 2 replay workers.

Usage: python benchmarks/service_overhead.py [--repeats 4] [--samples 64]
       python benchmarks/service_overhead.py --repeats 0 --output service-cached

Starts the embedded stack in this process (private Redis, local Ray, the app on
a loopback port), trains mnist-mlp through the service, then per repeat and in
turn: a fresh 64-sample job through the service, and the same 64 samples through
``attribution.attribute`` in this process (batch 64, one torch thread, as each
replay worker has one CPU). The service runs with MAGIC_REPLAY_BATCH_SIZE equal
to the sample count, so one worker also carries all samples in one reverse pass.
Each repeat uses new test indices so nothing is cached. The first repeat starts
the replay workers (cold); later ones find them warm in the pool, and the
overhead medians are over those. Then a fully cached job
is resubmitted ``--cached`` times and its latency (submit to succeeded status,
and the score fetch) recorded. Results go to benchmarks/results/service.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import attribution
from common import median, save


def run_service(args: argparse.Namespace, workers: int, storage: Path) -> dict:
    from client import AttributionClient
    from service.app import create_app
    from service.runs import run_folder
    from service.server import BackgroundServer
    from service.settings import Settings

    # The direct call carries all samples in one reverse pass; the service gets
    # the same batch limit so that the comparison measures only the service.
    settings = Settings(storage_dir=storage, replay_workers=workers,
                        replay_batch_size=args.samples, shard_size=max(64, args.samples))
    server = BackgroundServer(create_app(settings))
    url = server.start()
    rows, cached = [], []
    try:
        with AttributionClient(url) as client:
            created = client.create_run(args.recipe)
            run_id = client.wait_for_run(created["run_id"])["run_id"]
            run = attribution.TrainingRun.load(run_folder(settings.runs_dir, run_id))
            for repeat in range(args.repeats):
                indices = list(range(repeat * args.samples, (repeat + 1) * args.samples))
                started = time.perf_counter()
                job_id = client.submit_job(run_id, indices)
                client.wait(job_id, poll_interval=0.05, progress=False)
                service_s = time.perf_counter() - started
                started = time.perf_counter()
                attribution.attribute(run, indices, batch_size=args.samples)
                direct_s = time.perf_counter() - started
                rows.append({"service_s": service_s, "direct_s": direct_s,
                             "overhead": service_s / direct_s - 1, "cold": repeat == 0})
                print(workers, "workers", rows[-1], flush=True)
            indices = list(range(args.samples))
            client.wait(client.submit_job(run_id, indices), progress=False)
            for _ in range(args.cached):
                started = time.perf_counter()
                job_id = client.submit_job(run_id, indices)
                client.wait(job_id, poll_interval=0.005, progress=False)
                status_s = time.perf_counter() - started
                client.scores(job_id)
                cached.append({"status_s": status_s,
                               "with_scores_s": time.perf_counter() - started})
    finally:
        server.stop()
    return {"rows": rows, "cached": cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist-mlp")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--cached", type=int, default=30)
    parser.add_argument("--output", default="service",
                        help="results file name under benchmarks/results (without .json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from service.settings import Settings
    from workers.cluster import start_ray, stop_ray

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        start_ray(Settings(storage_dir=Path(folder)))
        try:
            for workers in (1, 2):
                results[workers] = run_service(args, workers, Path(folder) / f"w{workers}")
        finally:
            stop_ray()
    summary = {}
    for workers, result in results.items():
        cold = [r for r in result["rows"] if r["cold"]]
        rows = [r for r in result["rows"] if not r["cold"]] or cold
        timed = {
            "cold_overhead": cold[0]["overhead"],
            "warm_repeats": len(rows),
            "median_service_s": median([r["service_s"] for r in rows]),
            "median_direct_s": median([r["direct_s"] for r in rows]),
            "median_overhead": median([r["overhead"] for r in rows]),
            "samples_per_s": args.samples / median([r["service_s"] for r in rows]),
        } if rows else {}
        summary[f"{workers}_workers"] = {
            **timed,
            "cached_median_status_ms": 1e3 * median([c["status_s"] for c in result["cached"]]),
            "cached_median_with_scores_ms":
                1e3 * median([c["with_scores_s"] for c in result["cached"]]),
        }
    print(summary)
    save(args.output, {"recipe": args.recipe, "samples": args.samples, "repeats": args.repeats,
                     "summary": summary, "raw": {str(k): v for k, v in results.items()}})


if __name__ == "__main__":
    main()
