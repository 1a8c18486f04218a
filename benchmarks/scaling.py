"""Per-step costs behind docs/scaling.md: training, replay, checkpoints and Redis.

Run with one thread on a quiet machine:

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --threads 1

On mnist-cnn (a convolutional recipe, the closest to a CIFAR-10 network that
ships with the project) it times per repeat, in one process: one training run,
then one REPLAY reverse pass with 1 test sample and with ``--batch`` test
samples. Per-step figures use the process's CPU seconds (see ``timed``).
It also counts the matrix-product FLOPs of one training step, which turns the
seconds into a throughput. It measures the bytes of the saved run. Last, it
times writing score vectors of a CIFAR-10-sized run (50,000 float32 values)
to a private Redis server on a unix socket. Results go to
benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attribution  # noqa: E402
from benchmarks.common import median, save  # noqa: E402

CIFAR_TRAIN = 50_000


def timed(fn) -> tuple[float, float]:
    """Return (wall seconds, CPU seconds of this process) of ``fn()``.

    With one torch thread the CPU seconds barely change when other jobs share
    the machine, so the estimates use them. The wall seconds are recorded too.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def training_step_flops(run: attribution.TrainingRun) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run.trainer.advance(run.checkpoints[0], run.num_steps // 2)
    return int(counter.get_total_flops())


def run_bytes(run: attribution.TrainingRun) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        run.save(folder)
        files = {path.name: path.stat().st_size for path in Path(folder).iterdir()}
    state = sum(tensor.numel() * tensor.element_size() for tensor in run.checkpoints[0])
    return {"files": files, "total": sum(files.values()), "optimizer_state": state,
            "checkpoints": len(run.checkpoints)}


def redis_writes(count: int, n_train: int) -> dict:
    """Time ``count`` score vectors of ``n_train`` float32 values through Store.put_scores."""
    from service.embedded import EmbeddedRedis
    from service.store import Store

    server = EmbeddedRedis(data_dir=None)
    url = server.start()
    try:
        store = Store.from_url(url)
        vector = np.random.default_rng(0).standard_normal(n_train).astype(np.float32)
        started = time.perf_counter()
        for q in range(count):
            store.put_scores({"fingerprint": "bench", "test_index": q, "measurement": "loss",
                              "engine_version": "bench"}, vector)
        seconds = time.perf_counter() - started
        memory = int(store.client.info("memory")["used_memory"])
        store.close()
    finally:
        server.stop()
    return {"vectors": count, "n_train": n_train, "seconds": seconds,
            "vectors_per_second": count / seconds,
            "megabytes_per_second": count * vector.nbytes / seconds / 1e6,
            "redis_used_memory_bytes": memory, "bytes_per_vector": vector.nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="mnist-cnn")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the timed run")
    parser.add_argument("--batch", type=int, default=32, help="test samples per vmapped pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--redis-vectors", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = attribution.recipes.get(args.recipe, epochs=args.epochs)
    run = attribution.train(spec)
    steps = run.num_steps
    batch_indices = list(range(1, 1 + args.batch))
    rows = []
    for repeat in range(args.repeats):
        train_wall, train_cpu = timed(lambda: attribution.train(spec))
        one_wall, one_cpu = timed(lambda: attribution.attribute(run, [0], policy="replay"))
        batch_wall, batch_cpu = timed(lambda: attribution.attribute(
            run, batch_indices, policy="replay", batch_size=args.batch))
        rows.append({"train_wall_s": train_wall, "train_cpu_s": train_cpu,
                     "replay_1_wall_s": one_wall, "replay_1_cpu_s": one_cpu,
                     "replay_batch_wall_s": batch_wall, "replay_batch_cpu_s": batch_cpu})
        print(f"repeat {repeat}: CPU seconds: train {train_cpu:.2f}, 1 sample {one_cpu:.2f}, "
              f"{args.batch} samples {batch_cpu:.2f}", flush=True)

    forward_steps = attribution.attribute_with_stats(run, [0], policy="replay").stats.forward_steps
    train_step = median([row["train_cpu_s"] for row in rows]) / steps
    replay_1_step = median([row["replay_1_cpu_s"] for row in rows]) / steps
    replay_batch_step = median([row["replay_batch_cpu_s"] for row in rows]) / steps / args.batch
    flops = training_step_flops(run)
    result = {
        "recipe": args.recipe, "epochs": args.epochs, "num_steps": steps,
        "n_train": run.n_train, "batch_size": spec.batch_size, "test_batch": args.batch,
        "parameters": sum(p.numel() for p in run.parameters), "repeats": rows,
        "forward_steps_replayed": forward_steps, "load_average": os.getloadavg(),
        "train_step_s": train_step,
        "replay_step_per_sample_s": {"1": replay_1_step, str(args.batch): replay_batch_step},
        "replay_over_train": {"1": replay_1_step / train_step,
                              str(args.batch): replay_batch_step / train_step},
        "train_step_flops": flops,
        "train_flops_per_second": flops / train_step,
        "run_bytes": run_bytes(run),
        "redis": redis_writes(args.redis_vectors, CIFAR_TRAIN),
        "command": " ".join(sys.argv),
    }
    path = save("scaling", result)
    print(f"train step {train_step * 1e3:.2f} ms, replay step per sample "
          f"{replay_1_step * 1e3:.2f} ms (1) / {replay_batch_step * 1e3:.2f} ms ({args.batch}); "
          f"wrote {path}")


if __name__ == "__main__":
    main()
