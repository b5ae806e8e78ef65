"""Pareto search against a single-objective accuracy search, with the same budget.

Three searches of the ResNet space, each given ``--budget`` seconds (no trial starts after it, the
trial in flight stops at it), the same data and seed, one after the other in this process:

  (a) ``--objective val_accuracy,param_count`` (multi-objective TPE, tuner's cheaper-peers pruning);
  (b) the same with ``--pruner none`` (what the pruning rule saves, and whether it loses the front);
  (c) ``--objective val_accuracy`` (tuner's default: TPE + Hyperband).

For each: trials finished and pruned, epochs trained, the hypervolume of the front of its COMPLETE
trials in (validation accuracy, log10 parameters) against the reference point (accuracy 0,
10^7 parameters), the smallest model it completed, and the best validation and test accuracy under
50k and 200k parameters (the ResNet space's smallest model, ResNet-8 with 16 filters, has about 78k).
Prints a Markdown table; ``--json`` writes the numbers; ``--plot PNG`` draws each run's models and
its front (``pip install -e '.[plots]'``).

    python benchmarks/pareto.py --budget 600 --epochs 5
    python benchmarks/pareto.py --dataset fashion_mnist --budget 1800
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REFERENCE_PARAMS = 1e7  # the reference point's size; its accuracy is 0
BUDGETS = (50_000, 200_000)
RUNS = {
    "a": ("Pareto: val_accuracy,param_count", {"objective": "val_accuracy,param_count"}),
    "b": ("Pareto, no pruning", {"objective": "val_accuracy,param_count", "pruner": "none"}),
    "c": ("single objective: val_accuracy", {"objective": "val_accuracy"}),
}


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by ``(accuracy, params)`` points (higher accuracy, fewer parameters) up to the
    reference point (0, ``REFERENCE_PARAMS``), with parameters on a log10 scale."""
    top = math.log10(REFERENCE_PARAMS)
    area, best = 0.0, 0.0
    # Sweep from the smallest model up: each point adds the accuracy it gains over smaller ones.
    for accuracy, params in sorted(points, key=lambda p: (p[1], -p[0])):
        if accuracy > best and params < REFERENCE_PARAMS:
            area += (accuracy - best) * (top - math.log10(max(params, 1.0)))
            best = accuracy
    return area


def summarise(study) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = [(t.user_attrs["val_accuracy"], t.user_attrs["param_count"]) for t in complete]
    found = {
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED and "skipped" not in t.user_attrs for t in trials),
        "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
        "hypervolume": round(hypervolume(points), 4),
        "smallest": min((p for _, p in points), default=None),
        "points": points,
    }
    for budget in BUDGETS:
        within = [t for t in complete if t.user_attrs["param_count"] <= budget]
        best = max(within, key=lambda t: t.user_attrs["val_accuracy"], default=None)
        found[f"val_{budget // 1000}k"] = None if best is None else round(best.user_attrs["val_accuracy"], 4)
        found[f"test_{budget // 1000}k"] = None if best is None else round(best.user_attrs["test_accuracy"], 4)
    return found


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point dominates (higher accuracy, fewer parameters), smallest model first."""
    kept: list[tuple[float, float]] = []
    for accuracy, params in sorted(points, key=lambda p: (p[1], -p[0])):
        if not kept or accuracy > kept[-1][0]:
            kept.append((accuracy, params))
    return kept


def plot(results: dict, title: str, path: str) -> None:
    """Every complete model of each run (validation accuracy against parameters) and its front."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, ax = pyplot.subplots(figsize=(7, 4.5))
    for key, row in results.items():
        if not row["points"]:
            continue
        accuracy, params = zip(*row["points"], strict=True)
        dots = ax.scatter(params, accuracy, s=14, alpha=0.45)
        edge = front(row["points"])
        ax.step([p for _, p in edge], [a for a, _ in edge], where="post", color=dots.get_facecolor()[0][:3],
                label=f"({key}) {row['name']}: hypervolume {row['hypervolume']}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(max(0.5, min(a for row in results.values() for a, _ in row["points"] or [(0.5, 0)])), None)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--budget", type=float, default=300, help="seconds per search (default 300)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="PNG", help="draw each run's models and front (needs matplotlib)")
    args = parser.parse_args()

    import tuner

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.runs:
            name, options = RUNS[key]
            start = time.time()
            study = tuner.search("resnet", args.dataset, epochs=args.epochs, trials=10_000, timeout=args.budget,
                                 seed=args.seed, storage=f"sqlite:///{Path(tmp) / (key + '.db')}", keep=0,
                                 **options)
            results[key] = {"name": name, **summarise(study), "wall_s": round(time.time() - start)}
            print(key, {k: v for k, v in results[key].items() if k != "points"}, flush=True)
    print(f"\n{args.dataset}, {args.budget:.0f} s per search, seed {args.seed}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}); hypervolume in (val accuracy, log10 params) "
          f"from (0, 1e7)\n")
    columns = ["complete", "pruned", "epochs", "hypervolume", "smallest", "val_50k", "test_50k", "val_200k",
               "test_200k", "wall_s"]
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for key, row in results.items():
        cells = ("-" if row[c] is None else str(row[c]) for c in columns)
        print(f"| ({key}) {row['name']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, f"{args.dataset}, {args.budget:.0f} s per search, seed {args.seed}", args.plot)


if __name__ == "__main__":
    main()
