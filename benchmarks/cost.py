"""Cost of metagradients relative to one training run, measured side by side.

Usage: python benchmarks/cost.py [--recipe mnist-mlp] [--repeats 5] [--batch 64]

For each repeat, in one process and in turn: one training run, one test
sample's metagradient keeping all states, the same with REPLAY, and ``batch``
test samples in one vmapped pass with each policy. Ratios are formed per repeat
and the medians reported. A floating-point-operation count of one training step
and one reverse step (torch.utils.flop_counter) bounds how low the batched cost
per sample can go. Results go to benchmarks/results/cost.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import attribution
from attribution.metagrad import _manual_step
from common import median, save


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def step_flops(run: attribution.TrainingRun, batch: int) -> dict[str, float]:
    """FLOPs of one training step and of one reverse step with 1 and ``batch`` adjoints."""
    trainer = run.trainer
    state = run.checkpoints[0]
    t = run.num_steps // 2
    train_step = count_flops(lambda: trainer.advance(state, t))

    def reverse(k: int) -> int:
        adjoint = tuple(torch.randn(k, x.numel(), dtype=x.dtype) for x in state)
        return count_flops(lambda: _manual_step(trainer, state, t, adjoint))

    return {"train_step": train_step, "reverse_step_1": reverse(1),
            "reverse_step_batch": reverse(batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist-mlp")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=None,
                        help="REPLAY branching factor (default: the engine's, ceil(T^(1/3)))")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = attribution.recipes.get(args.recipe)
    run = attribution.train(spec)  # warm-up: loads the data set and allocator pools
    batch = list(range(args.batch))
    rows = []
    for repeat in range(args.repeats):
        row = {
            "train": timed(lambda: attribution.train(spec)),
            "keep_all_1": timed(lambda: attribution.attribute(run, [0], policy="keep_all")),
            "replay_1": timed(lambda: attribution.attribute(run, [0], policy="replay", k=args.k)),
            "keep_all_batch": timed(lambda: attribution.attribute(run, batch, policy="keep_all",
                                                                  batch_size=args.batch)),
            "replay_batch": timed(lambda: attribution.attribute(run, batch, policy="replay",
                                                                k=args.k, batch_size=args.batch)),
        }
        rows.append(row)
        print(repeat, {key: round(value, 2) for key, value in row.items()}, flush=True)
    ratios = {
        "keep_all_1_over_train": median([r["keep_all_1"] / r["train"] for r in rows]),
        "replay_1_over_train": median([r["replay_1"] / r["train"] for r in rows]),
        "keep_all_per_sample_batch_over_1": median(
            [r["keep_all_batch"] / args.batch / r["keep_all_1"] for r in rows]),
        "replay_per_sample_batch_over_1": median(
            [r["replay_batch"] / args.batch / r["replay_1"] for r in rows]),
    }
    seconds = {key: median([r[key] for r in rows]) for key in rows[0]}
    flops = step_flops(run, args.batch)
    flops["reverse_per_sample_batch_over_train_step"] = (
        flops["reverse_step_batch"] / args.batch / flops["train_step"])
    flops["reverse_1_over_train_step"] = flops["reverse_step_1"] / flops["train_step"]
    stats = attribution.attribute_with_stats(run, [0], policy="replay", k=args.k).stats
    print("ratios", ratios, "\nflops", flops, flush=True)
    save(f"cost-{args.recipe}", {
        "recipe": args.recipe, "num_steps": run.num_steps, "batch": args.batch, "k": args.k,
        "repeats": args.repeats, "median_seconds": seconds, "median_ratios": ratios,
        "rows": rows, "flops": flops, "replay_forward_steps": stats.forward_steps,
    })


if __name__ == "__main__":
    main()
