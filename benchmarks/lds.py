"""LDS of MAGIC scores at 1/5/10/20% drop on the digits-mlp and mnist-mlp recipes.

Usage: python benchmarks/lds.py [--recipes digits-mlp,mnist-mlp] [--subsets 50]
       [--test-samples 20]

Each fraction costs ``subsets`` retrainings of the recipe; results go to
benchmarks/results/lds.json.
"""

from __future__ import annotations

import argparse
import time

import torch

import attribution
from common import save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="digits-mlp,mnist-mlp")
    parser.add_argument("--fractions", default="0.01,0.05,0.1,0.2")
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--test-samples", type=int, default=20)
    parser.add_argument("--output", default="lds", help="name of the results file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = [float(p) for p in args.fractions.split(",")]
    results = {}
    for name in args.recipes.split(","):
        started = time.perf_counter()
        run = attribution.train(attribution.recipes.get(name))
        result = attribution.evaluate_lds(run, list(range(args.test_samples)),
                                          fractions=fractions, num_subsets=args.subsets,
                                          progress=True)
        results[name] = {
            "spec": run.spec.to_dict(),
            "metrics": run.metrics,
            "lds": {str(p): v for p, v in result.lds.items()},
            "per_sample": {str(p): v for p, v in result.per_sample.items()},
            "seconds": time.perf_counter() - started,
        }
        print(name, {p: round(v, 3) for p, v in result.lds.items()}, flush=True)
    save(args.output, {"subsets": args.subsets, "test_samples": args.test_samples,
                 "fractions": fractions, "recipes": results})


if __name__ == "__main__":
    main()
