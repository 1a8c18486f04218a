"""Peak memory of REPLAY against keep-all and interval checkpointing on a ~1,000-step run.

Usage: python benchmarks/memory.py [--recipe mnist-mlp] [--epochs 25]

Each policy runs in a fresh subprocess, which reports the growth of its peak
resident set size (ru_maxrss) during one single-sample reverse pass, the peak
number of optimizer states the policy held, and the forward steps it replayed.
Results go to benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

POLICIES = [("keep_all", None), ("interval", None), ("replay", None)]


def measure_one(recipe: str, epochs: int, policy: str) -> dict:
    import attribution

    run = attribution.train(attribution.recipes.get(recipe, epochs=epochs))
    attribution.attribute(run, [0], policy="replay", k=2)  # warm up allocator and kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = attribution.attribute_with_stats(run, [0], policy=policy)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state_bytes = sum(x.numel() * x.element_size() for x in run.checkpoints[0])
    return {
        "policy": policy, "num_steps": run.num_steps, "seconds": seconds,
        "peak_rss_growth_mib": (after - before) / 1024,
        "peak_states": result.stats.peak_states, "forward_steps": result.stats.forward_steps,
        "state_mib": state_bytes / 2**20,
        "peak_state_mib": result.stats.peak_states * state_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist-mlp")
    parser.add_argument("--epochs", type=int, default=25, help="25 epochs of mnist-mlp = 1,000 steps")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.recipe, args.epochs, args.child)))
        return
    from common import save

    rows = []
    for policy, _ in POLICIES:
        output = subprocess.run(
            [sys.executable, __file__, "--recipe", args.recipe, "--epochs", str(args.epochs),
             "--child", policy], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    save(f"memory-{args.recipe}", {"recipe": args.recipe, "epochs": args.epochs, "rows": rows})


if __name__ == "__main__":
    main()
