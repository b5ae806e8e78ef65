"""Search efficiency: our default search against plain random search and Keras Tuner's own, side by side.

Each approach gets the same wall-clock budget (no trial starts after it, and the trial in flight
stops at it), data and seeds:

  (a) tuner's default: TPE sampler + Hyperband pruning + early stopping, ResNet space;
  (b) plain random search over the same space, no pruning, no early stopping;
  (c) Keras Tuner's ``RandomSearch`` over its built-in ``keras_tuner.applications.HyperResNet``.

For each it reports trials finished, epochs trained, the best validation accuracy, the test accuracy of
the best trial, and the epochs trained (over all trials, in order) until some epoch first reached
``--target`` validation accuracy; the median over ``--seeds`` is printed as a Markdown table.

    python benchmarks/search_efficiency.py --budget 120 --seeds 0 1 2
    python benchmarks/search_efficiency.py --dataset cifar10 --budget 1800 --epochs 30 --target 0.9
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def epochs_to_target(curves: list[list[float]], target: float) -> int | None:
    """Epochs trained, over trials in the order they ran, until an epoch reached ``target``."""
    spent = 0
    for curve in curves:
        for value in curve:
            spent += 1
            if value >= target:
                return spent
    return None


def deadline_callback(deadline: float):
    """Stops the trial in flight at the deadline, so every approach gets the same wall-clock budget."""
    import keras

    class Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() > deadline:
                self.model.stop_training = True

    return Deadline()


def run_tuner(data_name: str, approach: str, seed: int, args, workdir: Path) -> dict:
    """(a) or (b): a tuner search limited by time, read back from its study."""
    import optuna

    import tuner

    options = {"sampler": "tpe", "pruner": "hyperband"} if approach == "a" else {
        "sampler": "random", "pruner": "none", "patience": None, "start_from_defaults": False}
    start = time.perf_counter()
    study = tuner.search("resnet", data_name, trials=10_000, epochs=args.epochs, timeout=args.budget,
                         study=f"{approach}-{seed}", storage=f"sqlite:///{workdir / 'bench.db'}",
                         seed=seed, batch_size=args.batch_size, **options)
    wall = time.perf_counter() - start
    done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
            if "skipped" not in t.user_attrs]  # --timeout: the trial in flight stops at the deadline
    curves = [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in done]
    best = max(done, key=lambda t: max(t.intermediate_values.values(), default=-1))
    return {
        "trials": len(done),
        "epochs": sum(len(c) for c in curves),
        "best_val": max((max(c) for c in curves if c), default=math.nan),
        "test_of_best": best.user_attrs.get("test_accuracy", math.nan),
        "to_target": epochs_to_target(curves, args.target),
        "wall": wall,
    }


class _Curves:
    """Per-epoch val_accuracy of every Keras Tuner trial (class-level: Keras Tuner deep-copies callbacks)."""

    all: list[list[float]] = []


def run_keras_tuner(data_name: str, seed: int, args, workdir: Path) -> dict:
    """(c): Keras Tuner's RandomSearch over HyperResNet, stopped at the same deadline."""
    import keras
    import keras_tuner as kt
    import numpy as np

    from tuner.data import load_dataset
    from tuner.driver._search import auto_batch_size

    data = load_dataset(data_name)
    batch_size = args.batch_size or auto_batch_size(len(data.y_train))  # the same as (a) and (b)
    scale = 16.0 if data_name == "digits" else 255.0  # what a user would do: pixels to [0, 1]
    x = {s: getattr(data, f"x_{s}").astype("float32") / scale for s in ("train", "val", "test")}
    y = {s: keras.utils.to_categorical(getattr(data, f"y_{s}"), data.classes) for s in ("train", "val", "test")}
    deadline = time.perf_counter() + args.budget

    class DeadlineOracle(kt.oracles.RandomSearchOracle):
        def populate_space(self, trial_id):
            if time.perf_counter() > deadline:
                return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
            return super().populate_space(trial_id)

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            _Curves.all.append([])

        def on_epoch_end(self, epoch, logs=None):
            _Curves.all[-1].append(float(logs["val_accuracy"]))

    _Curves.all = []
    keras.utils.set_random_seed(seed)
    oracle = DeadlineOracle(objective="val_accuracy", max_trials=10_000, seed=seed)
    # kt.RandomSearch is kt.Tuner with a RandomSearchOracle; ours adds the deadline.
    search = kt.Tuner(hypermodel=kt.applications.HyperResNet(input_shape=data.input_shape,
                                                                    classes=data.classes),
                             oracle=oracle, directory=str(workdir), project_name=f"kt-{seed}")
    start = time.perf_counter()
    search.search(x["train"], y["train"], validation_data=(x["val"], y["val"]), epochs=args.epochs,
                  batch_size=batch_size, callbacks=[Record(), deadline_callback(deadline)], verbose=0)
    wall = time.perf_counter() - start
    curves = [c for c in _Curves.all if c]
    test = math.nan
    if curves:
        best_model = search.get_best_models(1)[0]
        test = float(best_model.evaluate(x["test"], y["test"], verbose=0)[1])
    return {
        "trials": len(curves),
        "epochs": sum(len(c) for c in curves),
        "best_val": max((max(c) for c in curves), default=math.nan),
        "test_of_best": test,
        "to_target": epochs_to_target(curves, args.target),
        "wall": wall,
    }


def median(values: list) -> str:
    """Median, with runs that never reached the target counted as infinitely slow."""
    numbers = [math.inf if v is None else v for v in values]
    m = statistics.median(numbers)
    if math.isinf(m):
        return "never"
    return f"{m:.4f}" if isinstance(m, float) and m < 1.5 else f"{m:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds per search")
    parser.add_argument("--epochs", type=int, default=10, help="max epochs per trial")
    parser.add_argument("--batch-size", type=int, help="default: tuner's automatic batch size")
    parser.add_argument("--target", type=float, default=0.97, help="validation accuracy to reach")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--approaches", default="abc", help="which of a, b, c to run")
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = {"a": "tuner default (TPE + Hyperband)", "b": "random search, no pruning",
             "c": "Keras Tuner RandomSearch + HyperResNet"}
    results: dict[str, list[dict]] = {k: [] for k in args.approaches}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for approach in args.approaches:
                workdir = Path(tmp) / f"{approach}{seed}"
                workdir.mkdir()
                run = run_keras_tuner if approach == "c" else None
                row = (run(args.dataset, seed, args, workdir) if run
                       else run_tuner(args.dataset, approach, seed, args, workdir))
                results[approach].append(row)
                print(f"seed {seed} {approach}: {row}", flush=True)

    import keras

    print(f"\n{args.dataset}, budget {args.budget:.0f} s per search, <= {args.epochs} epochs per trial, "
          f"target val_accuracy {args.target}, seeds {args.seeds}, median shown; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Keras {keras.__version__} "
          f"({keras.backend.backend()})\n")
    columns = ["trials", "epochs", "best_val", "test_of_best", "to_target", "wall"]
    print("| approach | trials finished | epochs trained | best val acc | test acc of best | "
          f"epochs to {args.target} | wall s |")
    print("|---|---|---|---|---|---|---|")
    for approach, rows in results.items():
        cells = [median([r[c] for r in rows]) for c in columns]
        print(f"| ({approach}) {names[approach]} | " + " | ".join(cells) + " |")
    # A run that never reached the target needs more epochs than it trained: show that lower bound.
    print(f"\nepochs to {args.target} per seed {args.seeds}:")
    for approach, rows in results.items():
        print(f"  ({approach}) " + ", ".join(str(r["to_target"]) if r["to_target"] else f">{r['epochs']}"
                                           for r in rows))


if __name__ == "__main__":
    main()
