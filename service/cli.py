"""The ``magic-attr`` command line.

Engine subcommands (``train``, ``attribute``, ``lds``) import only the
``attribution`` package; service subcommands import the server stack lazily, so
``magic-attr train --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

DEFAULT_RECIPE = "mnist-mlp"


def _parse_overrides(pairs: list[str]) -> dict:
    """Parse ``key=value`` pairs; values are read as JSON when possible (2, 0.1, [64])."""
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: override {pair!r} must look like key=value, e.g. epochs=2")
        key, raw = pair.split("=", 1)
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def _parse_indices(text: str) -> list[int]:
    """Parse '0,1,2' or '0-15' (inclusive range) into a list of test indices."""
    indices: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(bound) for bound in part.split("-", 1))
                if high < low:
                    raise SystemExit(f"error: test index range {part!r} is reversed; "
                                     f"write {high}-{low}")
                indices.extend(range(low, high + 1))
            elif part:
                indices.append(int(part))
        except ValueError:
            raise SystemExit(f"error: --test-indices {text!r} is invalid; write non-negative "
                             "integers and ranges such as 0,5,9 or 0-15") from None
    return indices


def _parse_fractions(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",")]
    except ValueError:
        raise SystemExit(f"error: --fractions {text!r} is invalid; write drop fractions such "
                         "as 0.01,0.05") from None


def _load_or_train(args: argparse.Namespace):
    import attribution

    saved = bool(args.run_dir) and (Path(args.run_dir) / "run.json").is_file()
    if saved and args.recipe is None and not args.set:
        return attribution.TrainingRun.load(args.run_dir)
    spec = attribution.recipes.get(args.recipe or DEFAULT_RECIPE, **_parse_overrides(args.set))
    if saved:
        run = attribution.TrainingRun.load(args.run_dir)
        if run.spec != spec:
            raise SystemExit(f"error: {args.run_dir} contains a run of another spec; "
                             "pass a new --run-dir or the same --recipe and --set values")
        return run
    run = attribution.train(spec, progress=True)
    if args.run_dir:
        run.save(args.run_dir)
    return run


SMOOTHNESS_FILE = "smoothness.json"


def cmd_train(args: argparse.Namespace) -> int:
    run = _load_or_train(args)
    smoothness = None
    if not args.no_smoothness:
        from attribution.smoothness import smoothness_probe

        smoothness = smoothness_probe(run).to_dict()
        if args.run_dir:
            (Path(args.run_dir) / SMOOTHNESS_FILE).write_text(json.dumps(smoothness, indent=2))
        _warn_if_not_smooth(smoothness)
    print(json.dumps({"fingerprint": run.fingerprint, "num_steps": run.num_steps,
                      "metrics": run.metrics, "smoothness": smoothness,
                      "run_dir": args.run_dir}, indent=2))
    return 0


def _warn_if_not_smooth(smoothness: Optional[dict]) -> None:
    if smoothness and smoothness.get("warning"):
        print(f"warning: {smoothness['warning']}", file=sys.stderr)


def _saved_smoothness(run_dir: Optional[str]) -> Optional[dict]:
    """Return the probe result that ``train`` saved beside the run, if any."""
    path = Path(run_dir) / SMOOTHNESS_FILE if run_dir else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def cmd_attribute(args: argparse.Namespace) -> int:
    import attribution

    if args.top_k < 1:
        raise SystemExit(f"error: --top-k {args.top_k} must be at least 1")
    run = _load_or_train(args)
    _warn_if_not_smooth(_saved_smoothness(args.run_dir))
    indices = _parse_indices(args.test_indices)
    result = attribution.attribute_with_stats(run, indices, measurement=args.measurement,
                                              policy=args.policy, batch_size=args.batch_size,
                                              progress=True)
    if args.output:
        import numpy as np

        np.save(args.output, result.scores.to("cpu").double().numpy())
    summary = []
    for q, index in enumerate(indices):
        row = result.scores[q]
        # Lower loss is better, higher margin or logit is better.
        signed = row if args.measurement == "loss" else -row
        order = signed.argsort()
        summary.append({
            "test_index": index,
            **{f"test_{key}": value for key, value in _describe(run, index, "test").items()},
            "proponents": [{"train_index": int(i), **_describe(run, i, "train"),
                            "score": float(row[i])}
                           for i in order[: args.top_k] if signed[i] < 0],
            "opponents": [{"train_index": int(i), **_describe(run, i, "train"),
                           "score": float(row[i])}
                          for i in order.flip(0)[: args.top_k] if signed[i] > 0],
        })
    print(json.dumps({"measurement": args.measurement, "seconds": result.seconds,
                      "forward_steps_replayed": result.stats.forward_steps,
                      "scores_file": args.output, "top": summary}, indent=2))
    return 0


def _describe(run, index: int, split: str) -> dict:
    """Return the label of an image example, or the text of a language-model chunk."""
    dataset = run.trainer.dataset
    if dataset.task == "language_model":
        from attribution.text import decode

        tokens = (dataset.x_train if split == "train" else dataset.x_test)[int(index)]
        return {"text": decode(tokens, dataset.vocab)}
    labels = dataset.y_train if split == "train" else dataset.y_test
    return {"label": int(labels[int(index)])}


def cmd_lds(args: argparse.Namespace) -> int:
    import time

    from attribution.baselines import check_methods
    from attribution.lds import compare_methods
    from attribution.smoothness import smoothness_probe

    started = time.perf_counter()
    methods = check_methods(m.strip() for m in args.methods.split(",") if m.strip())
    fractions = _parse_fractions(args.fractions)
    run = _load_or_train(args)
    options = {"trak": {"proj_dim": args.trak_proj_dim}} if args.trak_proj_dim else {}
    result = compare_methods(run, range(args.test_samples), methods, fractions=fractions,
                             num_subsets=args.subsets, seed=args.seed,
                             measurement=args.measurement, options=options, progress=True)
    smoothness = None if args.no_smoothness else smoothness_probe(run, seed=args.seed)
    if smoothness is not None and smoothness.warning:
        print(f"warning: {smoothness.warning}", file=sys.stderr)

    payload = {"recipe": args.recipe, "run_fingerprint": run.fingerprint,
               "subsets": args.subsets,
               "test_samples": args.test_samples, **result.to_dict(),
               "smoothness": None if smoothness is None else smoothness.to_dict(),
               "method_seconds": result.seconds, "seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    for method in methods:
        if method in result.failed:
            print(f"{method:7s} failed: {result.failed[method]}")
            continue
        for p, v in result.lds[method].items():
            print(f"{method:7s} drop {100 * p:5.1f}%  LDS {v:.3f}")
    if smoothness is not None:
        print(f"smoothness {smoothness.score:.3f} (threshold {smoothness.threshold:.2f})")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default=None,
                        help=f"recipe name (default {DEFAULT_RECIPE}, or the run saved in "
                             "--run-dir when neither --recipe nor --set is given)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set epochs=2 --set dtype=float64")
    parser.add_argument("--run-dir", default=None,
                        help="folder to save the training run to, or load it from if present")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magic-attr", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe deterministically and save the run")
    _add_run_arguments(train)
    train.add_argument("--no-smoothness", action="store_true",
                       help="skip the smoothness probe (4 extra training runs), which warns "
                            "when scores will predict retraining poorly")
    train.set_defaults(func=cmd_train)

    attribute = sub.add_parser("attribute", help="compute MAGIC scores for test samples")
    _add_run_arguments(attribute)
    attribute.add_argument("--test-indices", default="0-3", help="e.g. 0,5,9 or 0-15")
    attribute.add_argument("--measurement", default="loss", choices=["loss", "margin", "logit"])
    attribute.add_argument("--policy", default="replay", choices=["replay", "interval", "keep_all"])
    attribute.add_argument("--batch-size", type=int, default=64,
                           help="test samples per reverse pass")
    attribute.add_argument("--top-k", type=int, default=3, help="proponents and opponents shown")
    attribute.add_argument("--output", default=None, help="write the score matrix to this .npy")
    attribute.set_defaults(func=cmd_attribute)

    lds = sub.add_parser("lds", help="linear datamodeling score by retraining on subsets")
    _add_run_arguments(lds)
    lds.add_argument("--methods", default="magic",
                     help="comma-separated methods among magic, trak, ekfac, tracin")
    lds.add_argument("--fractions", default="0.01,0.05,0.1", help="drop fractions, e.g. 0.01,0.05")
    lds.add_argument("--subsets", type=int, default=50, help="retrained subsets per fraction")
    lds.add_argument("--test-samples", type=int, default=20, help="first K test samples")
    lds.add_argument("--measurement", default="loss", choices=["loss", "margin", "logit"])
    lds.add_argument("--seed", type=int, default=0, help="seed of the subset draw")
    lds.add_argument("--trak-proj-dim", type=int, default=None,
                     help="TRAK's projection dimension (default n_train / 16, clipped to 8..512)")
    lds.add_argument("--no-smoothness", action="store_true",
                     help="skip the smoothness probe (4 extra training runs)")
    lds.add_argument("--json", action="store_true", help="print JSON")
    lds.set_defaults(func=cmd_lds)

    for register in _service_commands():
        register(sub)
    return parser


def _service_commands() -> list[Callable]:
    """Subcommand registrars of the service layer (serve, demo), added when present."""
    try:
        from service import commands
    except ImportError:
        return []
    return [commands.register]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from attribution.errors import AttributionError

    try:
        return args.func(args)
    except AttributionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
