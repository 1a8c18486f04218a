"""Regenerate docs/evaluation.md: LDS of MAGIC, TRAK, EK-FAC and TracIn with plots.

Usage:
    .venv/bin/python benchmarks/evaluation_report.py            # measure, then write the page
    .venv/bin/python benchmarks/evaluation_report.py --plot-only  # rewrite from saved results

Raw results go to benchmarks/results/evaluation.json, PNGs to docs/img/.
Every method is scored on the same retrained subsets of one training run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import attribution
from attribution.baselines import MethodError, method_scores
from attribution.baselines.trak import default_proj_dim
from attribution.lds import compare_methods
from attribution.smoothness import smoothness_probe

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "evaluation.json"
PAGE = ROOT / "docs" / "evaluation.md"
IMAGES = ROOT / "docs" / "img"
METHODS = ["magic", "trak", "ekfac", "tracin"]
FRACTIONS = [0.01, 0.05, 0.1]
TEST_SAMPLES = 20
SUBSETS = {"digits-mlp": 50, "mnist-mlp": 50, "mnist-cnn": 20}
PROJ_DIMS = [32, 64, 128, 256, 512]
COST_SAMPLES = [1, 4, 16]
NON_SMOOTH = {"output_scale": 1.0, "lr": 0.5}

logger = logging.getLogger("evaluation_report")


def hardware() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, CPU only")


def evaluate_recipe(recipe: str, overrides: dict, subsets: int, sweep: bool) -> dict:
    """Run every method and the smoothness probe on one recipe; return a JSON-ready dict."""
    run = attribution.train(attribution.recipes.get(recipe, **overrides))
    result = compare_methods(run, range(TEST_SAMPLES), METHODS, fractions=FRACTIONS,
                             num_subsets=subsets, seed=0)
    if sweep:
        for proj_dim in PROJ_DIMS:
            if proj_dim > run.n_train // 2:
                continue
            started = time.perf_counter()
            try:
                scores = method_scores(run, result.test_indices, "trak", proj_dim=proj_dim)
            except MethodError as error:
                result.failed[f"trak-{proj_dim}"] = str(error)
                continue
            result.add_scores(f"trak-{proj_dim}", scores.numpy(),
                              seconds=time.perf_counter() - started)
    smoothness = smoothness_probe(run)
    payload = result.to_dict()
    payload.update(recipe=recipe, overrides=overrides, metrics=run.metrics,
                   trak_proj_dim=default_proj_dim(run.n_train),
                   n_train=run.n_train, num_steps=run.num_steps,
                   smoothness=smoothness.to_dict(),
                   changes={m: first_changes(result.changes(m, FRACTIONS[0]))
                            for m in METHODS if m in result.lds})
    return payload


def first_changes(changes: dict, count: int = 4) -> dict:
    """Keep the first ``count`` test samples of the predicted and true changes for the scatter."""
    return {key: [row[:count] for row in rows] for key, rows in changes.items()}


def measure_cost(recipe: str) -> dict:
    """Seconds of each method against the number of test samples on one run."""
    run = attribution.train(attribution.recipes.get(recipe))
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    for k in COST_SAMPLES:
        for method in METHODS:
            started = time.perf_counter()
            method_scores(run, range(k), method)
            seconds[method].append(time.perf_counter() - started)
            logger.info("cost %s k=%d: %.1f s", method, k, seconds[method][-1])
    return {"recipe": recipe, "test_samples": COST_SAMPLES, "seconds": seconds,
            "train_seconds": run.metrics["train_seconds"], "threads": torch.get_num_threads()}


def measure(smoke: bool) -> dict:
    results: dict = {"hardware": hardware(), "recipes": {}, "started": time.time()}
    plan = [("digits-mlp", {}, SUBSETS["digits-mlp"], True),
            ("mnist-mlp", {}, SUBSETS["mnist-mlp"], True),
            ("mnist-cnn", {}, SUBSETS["mnist-cnn"], False),
            ("digits-mlp", NON_SMOOTH, 20, False)]
    if smoke:
        plan = [("digits-mlp", {"n_train": 200, "n_test": 50, "epochs": 2}, 5, True)]
    for recipe, overrides, subsets, sweep in plan:
        name = recipe + ("" if not overrides or smoke else " (non-smooth)")
        started = time.perf_counter()
        results["recipes"][name] = evaluate_recipe(recipe, overrides, subsets, sweep)
        results["recipes"][name]["wall_seconds"] = time.perf_counter() - started
        logger.info("%s done in %.0f s", name, time.perf_counter() - started)
        save(results)
    results["cost"] = measure_cost("digits-mlp" if smoke else "mnist-mlp")
    save(results)
    return results


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


# ------------------------------------------------------------------- plots
def plot_lds(results: dict) -> list[str]:
    import matplotlib.pyplot as plt

    names = [n for n in results["recipes"] if "non-smooth" not in n]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        entry = results["recipes"][name]
        for method in METHODS:
            if method in entry["lds"]:
                values = [entry["lds"][method][str(p)] for p in entry["fractions"]]
                ax.plot([100 * p for p in entry["fractions"]], values, marker="o", label=method)
        ax.set_title(f"{name}: {entry['num_subsets']} subsets, {len(entry['test_indices'])} "
                     "test samples", fontsize=9)
        ax.set_xlabel("drop fraction (%)")
        ax.set_ylabel("LDS")
        ax.set_ylim(-0.1, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(results["hardware"], fontsize=7)
    fig.tight_layout()
    path = IMAGES / "evaluation-lds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def best_baseline(entry: dict) -> str:
    first = str(entry["fractions"][0])
    candidates = [m for m in ("trak", "ekfac", "tracin") if m in entry["lds"]]
    return max(candidates, key=lambda m: entry["lds"][m][first])


def plot_scatter(results: dict, name: str) -> str:
    import matplotlib.pyplot as plt

    entry = results["recipes"][name]
    baseline = best_baseline(entry)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    for ax, method in zip(axes, ("magic", baseline)):
        predicted = np.asarray(entry["changes"][method]["predicted"])
        actual = np.asarray(entry["changes"][method]["actual"])
        for q in range(min(4, predicted.shape[1])):
            ax.scatter(predicted[:, q], actual[:, q], s=10, alpha=0.7,
                       label=f"test sample {entry['test_indices'][q]}")
        low = min(predicted[:, :4].min(), actual[:, :4].min())
        high = max(predicted[:, :4].max(), actual[:, :4].max())
        if method != "magic":
            ax.set_xlim(predicted[:, :4].min(), predicted[:, :4].max())
        else:
            ax.plot([low, high], [low, high], color="grey", lw=0.8)
        lds = entry["lds"][method][str(entry["fractions"][0])]
        ax.set_title(f"{method}: LDS {lds:.3f} at {100 * entry['fractions'][0]:g}% drop",
                     fontsize=9)
        ax.set_xlabel("predicted change of test loss")
        ax.set_ylabel("true change (retrained)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{name}, {entry['num_subsets']} subsets; {results['hardware']}", fontsize=7)
    fig.tight_layout()
    path = IMAGES / "evaluation-scatter.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return baseline


def plot_cost(results: dict) -> None:
    import matplotlib.pyplot as plt

    cost = results["cost"]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for method, seconds in cost["seconds"].items():
        ax.plot(cost["test_samples"], seconds, marker="o", label=method)
    ax.axhline(cost["train_seconds"], color="grey", ls="--", lw=0.8, label="one training run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("test samples")
    ax.set_ylabel("seconds")
    ax.set_title(f"cost on {cost['recipe']}, torch threads: {cost.get('threads', 'default')}",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(results["hardware"], fontsize=7)
    fig.tight_layout()
    fig.savefig(IMAGES / "evaluation-cost.png", dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------- page
def lds_table(results: dict) -> list[str]:
    lines = ["| training run | subsets | method | " +
             " | ".join(f"LDS at {100 * p:g}%" for p in FRACTIONS) + " | seconds |",
             "|---|---|---|" + "---|" * len(FRACTIONS) + "---|"]
    for name, entry in results["recipes"].items():
        for method in list(entry["lds"]) + list(entry["failed"]):
            if method in entry["failed"]:
                lines.append(f"| {name} | {entry['num_subsets']} | {method} | failed: "
                             f"{entry['failed'][method]} |" + " |" * len(FRACTIONS))
                continue
            values = " | ".join(f"{entry['lds'][method][str(p)]:.3f}" for p in entry["fractions"])
            lines.append(f"| {name} | {entry['num_subsets']} | {method} | {values} | "
                         f"{entry['seconds'][method]:.1f} |")
    return lines


def smoothness_table(results: dict) -> list[str]:
    lines = ["| training run | test accuracy | smoothness | sign agreement | MAGIC LDS at 1% |",
             "|---|---|---|---|---|"]
    for name, entry in results["recipes"].items():
        probe = entry["smoothness"]
        magic = entry["lds"].get("magic", {}).get("0.01")
        lds = "failed" if magic is None else f"{magic:.3f}"
        lines.append(f"| {name} | {entry['metrics']['test_accuracy']:.3f} | "
                     f"{probe['score']:.3f} | {probe['sign_agreement']:.3f} | {lds} |")
    return lines


def stale_default_note(results: dict) -> str:
    """Say so when the `trak` rows used another projection dimension than today's default."""
    stale = [f"{entry['trak_proj_dim']} on {name}" for name, entry in results["recipes"].items()
             if entry["trak_proj_dim"] != default_proj_dim(entry["n_train"])]
    if not stale:
        return ""
    return (f"The `trak` rows used the default of their time ({', '.join(stale)}); the "
            "default is now n_train / 16, chosen from this sweep.")


def write_page(results: dict) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    plot_lds(results)
    scatter_run = "mnist-mlp"
    if scatter_run not in results["recipes"]:
        scatter_run = next(iter(results["recipes"]))
    baseline = plot_scatter(results, scatter_run)
    plot_cost(results)
    cost = results["cost"]
    page = [
        "# Evaluation: MAGIC against TRAK, EK-FAC and TracIn",
        "",
        "Regenerate with `.venv/bin/python benchmarks/evaluation_report.py` "
        "(`--plot-only` rewrites this page from `benchmarks/results/evaluation.json`).",
        "",
        f"Hardware behind every number and figure: {results['hardware']}. Other "
        "benchmark processes shared the two cores during these runs, so the seconds are "
        "upper bounds.",
        "",
        "Every method scores the same training run and the same "
        f"{TEST_SAMPLES} test samples (test indices 0..{TEST_SAMPLES - 1}), and every LDS "
        "uses the same retrained subsets (seed 0). All scores are converted to MAGIC's "
        "convention, the derivative of the test loss with respect to the training "
        "example's weight. TRAK's margin scores are multiplied by -(1 - p_correct), "
        "EK-FAC's influence by -1 / n_train and TracIn's gradient products by -lr / b.",
        "",
        "Method settings: TRAK (`traker` 0.3.2, basic CPU projector) with 5 checkpoints "
        "of the run and projection dimension "
        + ", ".join(f"{entry['trak_proj_dim']} on {name}"
                    for name, entry in results["recipes"].items())
        + "; EK-FAC (`kronfluence` 1.0.1) "
        "with heuristic damping (0.1 times the mean eigenvalue); TracIn with 5 "
        "checkpoints at the starts of equal intervals of training.",
        "",
        "## LDS against drop fraction",
        "",
        "![LDS against drop fraction](img/evaluation-lds.png)",
        "",
        *lds_table(results),
        "",
        "Rows `trak-D` are TRAK with projection dimension D on the same subsets; the "
        "dimension must stay well below the number of training examples. "
        + stale_default_note(results),
        "",
        "## Predicted against true change",
        "",
        f"{scatter_run}, {results['recipes'][scatter_run]['num_subsets']} subsets at "
        f"{100 * FRACTIONS[0]:g}% drop, 4 test samples: MAGIC and the best baseline at that "
        f"fraction ({baseline}). The grey line is y = x; the baseline's x axis is rescaled, "
        "because LDS depends only on the ranking.",
        "",
        "![Predicted against true change](img/evaluation-scatter.png)",
        "",
        "## Smoothness probe",
        "",
        "Correlation of the test-loss changes after removing a random 1% of the "
        "training set at weight 1/2 and at weight 0 (2 directions, 4 training runs). "
        "The non-smooth run is digits-mlp with "
        f"{', '.join(f'{k}={v}' for k, v in NON_SMOOTH.items())}.",
        "",
        *smoothness_table(results),
        "",
        "The probe is coarse: a low score warns that MAGIC's LDS will be low, but a high "
        "score does not guarantee a high LDS (compare the last two columns).",
        "",
        "## Cost against the number of test samples",
        "",
        f"{cost['recipe']}, torch threads: {cost.get('threads', 'default')}. One training "
        f"run takes {cost['train_seconds']:.1f} s. TRAK and "
        "EK-FAC pay for the training set's gradients once and little per test sample; "
        "MAGIC pays one reverse pass through training, shared by up to 64 test samples "
        "at a time.",
        "",
        "![Cost against test samples](img/evaluation-cost.png)",
        "",
        "| method | " + " | ".join(f"{k} test samples" for k in cost["test_samples"]) + " |",
        "|---|" + "---|" * len(cost["test_samples"]),
        *[f"| {m} | " + " | ".join(f"{s:.1f} s" for s in secs) + " |"
          for m, secs in cost["seconds"].items()],
        "",
    ]
    PAGE.write_text("\n".join(page))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot-only", action="store_true",
                        help="rewrite the page and plots from the saved results")
    parser.add_argument("--cost-only", action="store_true",
                        help="measure only the cost figure, keeping the saved LDS results")
    parser.add_argument("--cost-recipe", default="mnist-mlp",
                        help="recipe of the cost figure (default mnist-mlp)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; 1 avoids slowdowns when other processes share "
                             "the cores")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny digits run with 5 subsets, to check the script")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.plot_only or args.cost_only:
        results = json.loads(RESULTS.read_text())
    else:
        results = measure(args.smoke)
    if args.cost_only:
        results["cost"] = measure_cost(args.cost_recipe)
        save(results)
    write_page(results)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
