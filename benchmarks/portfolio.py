"""How a space's alternatives are chosen: candidate configurations, each trained alone as the search
would train it, on several training sets, scored on the test split.

Each candidate is the space's defaults with a few values changed (``--set``), trained by the real
CLI in its own process, one after another: ``tuner search --trials 1 --patience 0`` with either a
fixed number of epochs (``--epochs 10``: what exploring judges a candidate by) or a wall-clock
budget (``--timeout``: what the final trial makes of it). The training sets are stratified subsets
of Fashion-MNIST of the sizes given (the race's subsets, ``race.subset_dataset``); each is scored on
the full test split.

    python benchmarks/portfolio.py --sizes 2000 5000 20000 --epochs 10
    python benchmarks/portfolio.py --sizes 5000 --timeout 150 --candidates alternative wide
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from race import subset_dataset

# The values each candidate changes from the ``resnet`` space's defaults.
ALTERNATIVE = ["version=v2", "optimizer=adamw", "learning_rate=0.01", "dropout=0.1"]
CANDIDATES = {
    "defaults": [],
    "alternative": ALTERNATIVE,
    "wide": [*ALTERNATIVE, "filters=64"],
    "deep14": [*ALTERNATIVE, "depth=14"],
    "deep20": [*ALTERNATIVE, "depth=20"],
    "kernel5": [*ALTERNATIVE, "kernel_size=5"],
    "wide-deep14": [*ALTERNATIVE, "filters=64", "depth=14"],
    # Regularised for a long final trial on small data: more dropout, five times the weight decay.
    "regularised": [*ALTERNATIVE[:-1], "dropout=0.3", "weight_decay=0.05"],
}


def trained(dataset: str, values: list[str], budget: list[str], seed: int, folder: Path,
            space: str = "resnet", flags: tuple[str, ...] = ()) -> dict:
    """Train one configuration of ``space`` alone (``values``: its ``--set`` values, ``flags``: more
    options); its validation and test accuracy, epochs and seconds as the store holds them."""
    import optuna

    db = f"sqlite:///{folder / 'portfolio.db'}"
    study = f"probe-{len(optuna.get_all_study_names(db)) if (folder / 'portfolio.db').exists() else 0}"
    command = [sys.executable, "-m", "tuner", "search", "--space", space, "--dataset", dataset,
               "--trials", "1", "--patience", "0", "--seed", str(seed), "--storage", db, "--study", study,
               *budget, *flags, *(f"--set={value}" for value in values)]
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    trial = optuna.load_study(study_name=study, storage=db).best_trial
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return {"test": trial.user_attrs["test_accuracy"], "validation": trial.value,
            "epochs": trial.user_attrs.get("epochs"), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000], help="training subset sizes")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=10, help="train each for this many epochs (default 10)")
    budget.add_argument("--timeout", type=float, help="or train each for this many seconds")
    args = parser.parse_args()
    flags = ["--timeout", str(args.timeout)] if args.timeout else ["--epochs", str(args.epochs)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            dataset = subset_dataset("fashion_mnist", size, folder)
            for name in args.candidates:
                runs = [trained(dataset, CANDIDATES[name], flags, seed, folder) for seed in args.seeds]
                row = (size, name, statistics.median(r["test"] for r in runs),
                       statistics.median(r["epochs"] or 0 for r in runs),
                       statistics.median(r["seconds"] for r in runs))
                rows.append(row)
                print(f"{size} {name}: {[round(r['test'], 4) for r in runs]}", flush=True)
    budget_text = f"{args.timeout:g} s" if args.timeout else f"{args.epochs} epochs"
    print(f"\nFashion-MNIST subsets, {budget_text} each, seeds {args.seeds} (median)\n")
    print("| training images | candidate | test accuracy | epochs | seconds |\n|---|---|---|---|---|")
    for size, name, test, epochs, seconds in rows:
        print(f"| {size:,} | {name} | {test:.4f} | {epochs:g} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
