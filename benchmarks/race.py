"""The race: tuner's default search against what a user would otherwise run, at equal wall-clock time.

Every competitor gets the same data splits (``tuner.load_dataset``: Fashion-MNIST's 60,000 training
images split 54,000/6,000 into train/validation, and its 10,000 test images), the same budget of
wall-clock seconds counted from its process start (imports and data loading included), and runs
alone, one after another, in a fresh process on this machine:

  (a) ``tuner search --space resnet --dataset fashion_mnist --timeout BUDGET`` with every other flag
      at its default, as a user runs it; its best trial's test accuracy as ``tuner best`` reports it;
  (b) the plain "2 Conv + pooling" Keras CNN (conv 32 -> pool -> conv 64 -> pool -> dense 128 ->
      dropout 0.5 -> softmax; pixels / 255, Adam 1e-3, batch 128), trained until the budget ends and
      scored at its best validation epoch;
  (b3) the same with three conv layers (32, 64, 128), each with batch normalisation;
  (c) Keras Tuner's ``RandomSearch`` over ``keras_tuner.applications.HyperResNet`` (images zero-padded
      to 32x32 and repeated to 3 channels: Keras' ResNets take no smaller input), batch 128;
  (d) AutoKeras' ``ImageClassifier`` with its defaults (``pip install autokeras``), where it installs;
  (e) tuner's defaults alone, trained as a careful user would: ``tuner search ... --timeout BUDGET
      --trials 1 --patience 0`` (one trial, the space's defaults, with the search's recipe: as the
      search's final trial its epochs are planned to fill the budget and its schedule runs to the
      end); (ep) the same with the default patience.

``--train-size N`` races on a stratified subset of N training images (the same subset for every
seed and competitor, written to a ``.npz`` with the full test split, so validation is carved from the
N images as for a user's folder).

For each: trials, epochs trained, best validation accuracy, the test accuracy of the model the tool
hands over, and the seconds until a validation accuracy of 0.90 and 0.92 was first reached; for
(a) and (e), which trial was returned (its number, and whether it holds the space's defaults).

    python benchmarks/race.py --budget 600 --seeds 0 1 2 --competitors a b
    python benchmarks/race.py --budget 600 --seeds 0 --competitors c d
    python benchmarks/race.py --budget 1800 --seeds 0 --competitors a e ep b
    python benchmarks/race.py --budget 600 --train-size 5000 --seeds 0 1 2 --competitors a e b
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THRESHOLDS = (0.90, 0.92)
NAMES = {
    "a": "tuner default search",
    "b": "2-conv CNN, whole budget",
    "b3": "3-conv CNN with BN, whole budget",
    "c": "Keras Tuner RandomSearch + HyperResNet",
    "d": "AutoKeras ImageClassifier",
    "e": "tuner's defaults alone, whole budget",
    "ep": "tuner's defaults alone, default patience",
}
# (e) and (ep): one trial of the space's defaults, its epochs planned to fill the budget.
DEFAULTS_ALONE = {"e": ["--trials", "1", "--patience", "0"], "ep": ["--trials", "1"]}
# Seconds a competitor may run past its budget (its last epoch, testing, saving) before it is killed.
GRACE = 300


def first_reached(marks: list[tuple[float, float]], threshold: float) -> float | None:
    """Seconds at which a validation accuracy first reached ``threshold``; ``marks`` are (s, val)."""
    return next((t for t, v in marks if v >= threshold), None)


# --- the competitors, each run in its own process by ``--one``. ---------------------------------

def run_tuner(args: argparse.Namespace, start: float, workdir: Path) -> dict:
    """(a), (e) and (ep): the real CLI; epoch lines are timed as they arrive on stderr."""
    import optuna

    db = f"sqlite:///{workdir / 'race.db'}"
    flags = DEFAULTS_ALONE.get(args.one) or ["--trials", "1000", *args.tuner_args.split()]
    command = [sys.executable, "-m", "tuner", "search", "--space", "resnet", "--dataset", args.dataset,
               "--timeout", str(args.budget - (time.time() - start)), "--seed", str(args.seed),
               "--study", "race", "--storage", db, *flags]
    marks = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                          cwd=workdir) as process:
        for line in process.stderr:
            found = re.search(r"epoch \d+/\d+ .*val_accuracy (\d\.\d+)", line)
            if found:
                marks.append((time.time() - start, float(found.group(1))))
    study = optuna.load_study(study_name="race", storage=db)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")
                and "skipped" not in t.user_attrs]
    best = study.best_trial
    defaults = study.trials[0].params  # a new study starts from the space's defaults
    returned = f"#{best.number}" + (" defaults" if best.params == defaults else "")
    if best.user_attrs.get("role"):
        returned += f" {best.user_attrs['role']}"
    return {"trials": len(finished), "epochs": sum(t.user_attrs.get("epochs", 0) for t in finished),
            "best_val": best.value, "test": best.user_attrs["test_accuracy"], "marks": marks,
            "exit_code": process.returncode, "best_params": best.params, "returned": returned,
            "returned_epochs": best.user_attrs.get("epochs"), "stopped_by": best.user_attrs.get("stopped_by"),
            "planned_epochs": [best.user_attrs.get("planned_epochs"), best.user_attrs.get("max_epochs")],
            "budget_split": study.user_attrs.get("budget_split"),
            "skipped": sum("skipped" in t.user_attrs for t in study.trials)}


def cnn(convs: int):
    """The benchmark's plain CNN: 2 convs (32, 64) with pooling, or 3 (32, 64, 128) with BN; dropout
    before the classifier, as in Keras' own MNIST convnet example (without it the 2-conv CNN over-fits
    after ~10 epochs and peaked at 0.911 validation accuracy here)."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Rescaling(1 / 255)])
    for i, filters in enumerate((32, 64, 128)[:convs]):
        model.add(layers.Conv2D(filters, 3, activation=None if convs == 3 else "relu"))
        if convs == 3:
            model.add(layers.BatchNormalization())
            model.add(layers.Activation("relu"))
        if i < 2:
            model.add(layers.MaxPooling2D())
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(10, activation="softmax"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def timed_callbacks(start: float, deadline: float, marks: list):
    """Record (seconds, val_accuracy) after each epoch; stop training at the deadline."""
    import keras

    class Timed(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.time() >= deadline:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            marks.append((time.time() - start, float(logs["val_accuracy"])))

    return Timed()


def run_cnn(args: argparse.Namespace, start: float, workdir: Path) -> dict:
    """(b) and (b3): train until the deadline, restore the best validation epoch, test it."""
    import keras

    from tuner.data import load_dataset

    keras.utils.set_random_seed(args.seed)
    data = load_dataset(args.dataset)
    model = cnn(3 if args.one == "b3" else 2)
    marks: list = []
    best = keras.callbacks.ModelCheckpoint(str(workdir / "best.weights.h5"), monitor="val_accuracy",
                                           save_best_only=True, save_weights_only=True)
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=10_000,
              batch_size=128, verbose=0, callbacks=[timed_callbacks(start, start + args.budget, marks), best])
    model.load_weights(workdir / "best.weights.h5")
    test = model.evaluate(data.x_test, data.y_test, batch_size=512, verbose=0)[1]
    return {"trials": 1, "epochs": len(marks), "best_val": max(v for _, v in marks), "test": float(test),
            "marks": marks}


def to_resnet_input(x):
    """Keras' ResNets take at least 32x32x3: pad 28x28 to 32x32 and repeat the gray channel."""
    import numpy as np

    pad = [(0, 0), (2, 2), (2, 2), (0, 0)] if x.shape[1] == 28 else [(0, 0)] * 4
    x = np.pad(x, pad).astype("float32") / 255.0
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def run_keras_tuner(args: argparse.Namespace, start: float, workdir: Path) -> dict:
    """(c): Keras Tuner's RandomSearch over HyperResNet; no trial starts after the deadline."""
    import keras
    import keras_tuner as kt

    from tuner.data import load_dataset

    data = load_dataset(args.dataset)
    x = {s: to_resnet_input(getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
    deadline = start + args.budget

    class DeadlineOracle(kt.oracles.RandomSearchOracle):
        def populate_space(self, trial_id):
            if time.time() >= deadline:
                return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
            return super().populate_space(trial_id)

    keras.utils.set_random_seed(args.seed)
    marks: list = []
    search = kt.Tuner(hypermodel=kt.applications.HyperResNet(input_shape=x["train"].shape[1:],
                                                             classes=data.classes),
                      oracle=DeadlineOracle(objective="val_accuracy", max_trials=10_000, seed=args.seed),
                      directory=str(workdir), project_name="kt")
    search.search(x["train"], keras.utils.to_categorical(data.y_train, data.classes),
                  validation_data=(x["val"], keras.utils.to_categorical(data.y_val, data.classes)),
                  epochs=10, batch_size=128, callbacks=[timed_callbacks(start, deadline, marks)], verbose=0)
    done = [t for t in search.oracle.trials.values() if t.score is not None]
    test = math.nan
    if done:
        model = search.get_best_models(1)[0]
        test = float(model.evaluate(x["test"], keras.utils.to_categorical(data.y_test, data.classes),
                                    verbose=0)[1])
    return {"trials": len(done), "epochs": len(marks), "best_val": max((v for _, v in marks), default=math.nan),
            "test": test, "marks": marks}


def run_autokeras(args: argparse.Namespace, start: float, workdir: Path) -> dict:
    """(d): AutoKeras' ImageClassifier with its defaults; after the deadline the trial in flight
    stops and no new one starts."""
    import autokeras as ak
    import keras
    import keras_tuner as kt
    import numpy as np
    import tree

    from tuner.data import load_dataset

    data = load_dataset(args.dataset)
    deadline = start + args.budget
    marks: list = []
    timed = timed_callbacks(start, deadline, marks)

    class NoTrialAfterDeadline(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if time.time() >= deadline:
                raise kt.errors.FatalError("budget spent")

    keras.utils.set_random_seed(args.seed)
    classifier = ak.ImageClassifier(directory=str(workdir), project_name="ak", seed=args.seed,
                                    overwrite=True)
    # Workaround: AutoKeras 3.0 records the data's shapes as NumPy arrays and sizes its layers with
    # their NumPy integers, which Keras 3.15's Dense refuses ("expected a positive integer.
    # Received: units=10"); the shapes are handed over holding Python ints.
    set_io_shapes = ak.graph.Graph.set_io_shapes
    ak.graph.Graph.set_io_shapes = lambda self, shapes: set_io_shapes(self, tree.map_structure(
        lambda shape: np.array([int(d) for d in shape], dtype=object), shapes))
    try:
        classifier.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                       callbacks=[timed, NoTrialAfterDeadline()], verbose=0)
    except kt.errors.FatalError:
        pass
    trials = [t for t in classifier.tuner.oracle.trials.values() if t.score is not None]
    model = classifier.tuner.get_best_models(1)[0]
    predictions = model.predict(data.x_test, verbose=0)
    test = float((predictions.argmax(axis=-1) == data.y_test).mean())
    return {"trials": len(trials), "epochs": len(marks), "best_val": max(v for _, v in marks),
            "test": test, "marks": marks, "autokeras": ak.__version__}


RUNNERS = {"a": run_tuner, "b": run_cnn, "b3": run_cnn, "c": run_keras_tuner, "d": run_autokeras,
           "e": run_tuner, "ep": run_tuner}


def subset_dataset(dataset: str, train_size: int, folder: Path) -> str:
    """A ``.npz`` of a stratified subset of ``train_size`` training images (train and validation
    pooled, the same subset for every seed) and the full test split; validation is carved from it."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from tuner.data import load_dataset

    data = load_dataset(dataset)
    x, y = np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val])
    kept, _ = train_test_split(np.arange(len(y)), train_size=train_size, stratify=y, random_state=0)
    path = folder / f"{dataset}-{train_size}.npz"
    np.savez(path, x_train=x[kept], y_train=y[kept], x_test=data.x_test, y_test=data.y_test)
    return str(path)


def run_one(args: argparse.Namespace) -> None:
    start = float(os.environ["RACE_START"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep_stores) / f"{args.one}-seed{args.seed}" if args.keep_stores else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = RUNNERS[args.one](args, start, workdir)
    result["wall"] = time.time() - start
    Path(args.out).write_text(json.dumps(result))


# --- the race: each competitor in a fresh process, then the tables. ------------------------------

def race(args: argparse.Namespace) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {c: [] for c in args.competitors}
    for seed in args.seeds:
        for competitor in args.competitors:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                env = {**os.environ, "RACE_START": repr(time.time()), "TF_CPP_MIN_LOG_LEVEL": "3"}
                command = [sys.executable, __file__, "--one", competitor, "--seed", str(seed),
                           "--budget", str(args.budget), "--dataset", args.dataset, "--out", out.name,
                           f"--tuner-args={args.tuner_args}",
                           *(["--keep-stores", args.keep_stores] if args.keep_stores else [])]
                try:
                    done = subprocess.run(command, env=env, timeout=args.budget + GRACE,
                                          capture_output=True, text=True)
                    text = Path(out.name).read_text()
                    row = json.loads(text) if text else {"error": done.stderr[-1500:]}
                except subprocess.TimeoutExpired:
                    row = {"error": f"still running {GRACE} s after its budget: killed"}
            row["seed"] = seed
            if competitor == "a" and args.tuner_args:
                row["tuner_args"] = args.tuner_args
            results[competitor].append(row)
            shown = {k: v for k, v in row.items() if k != "marks"}
            print(f"seed {seed} ({competitor}): {json.dumps(shown)}", flush=True)
    return results


def median(values: list[float | None]) -> str:
    numbers = [math.inf if v is None else v for v in values]
    if not numbers:
        return "-"
    m = statistics.median(numbers)
    if math.isinf(m):
        return "never"
    if all(isinstance(v, int) for v in values):
        return f"{m:g}"
    return f"{m:.4f}" if m < 1.5 else f"{m:.0f}"


def table(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    import keras

    size = f" (a stratified {args.train_size:,}-image training subset)" if args.train_size else ""
    lines = [f"{Path(args.dataset).stem}{size}, {args.budget:.0f} s per competitor, seeds {args.seeds} (median shown); "
             f"{platform.machine()}, {os.cpu_count()} CPUs, Keras {keras.__version__} "
             f"({keras.backend.backend()}), Python {platform.python_version()}", "",
             "| competitor | runs | trials | epochs | best val acc | test acc | s to 0.90 val | "
             "s to 0.92 val | wall s | returned |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for competitor, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        cells = [median([r[k] for r in ok]) for k in ("trials", "epochs", "best_val", "test")]
        cells += [median([first_reached(r["marks"], t) for r in ok]) for t in THRESHOLDS]
        cells.append(median([r["wall"] for r in ok]))
        cells.append(", ".join(f"{r['returned']} ({r['returned_epochs']} ep)" for r in ok if "returned" in r) or "-")
        variant = {r.get("tuner_args") for r in rows} - {None}
        name = NAMES[competitor] + (f" `{', '.join(sorted(variant))}`" if variant else "")
        lines.append(f"| ({competitor}) {name} | {len(ok)}/{len(rows)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("test accuracy per seed: " + "; ".join(
        f"({c}) " + ", ".join(f"{r['test']:.4f}" if "error" not in r else "error" for r in rows)
        for c, rows in results.items()))
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], args: argparse.Namespace, path: str) -> None:
    """Each competitor's validation accuracy over time (``pip install -e '.[plots]'``): every epoch
    as a dot, the best so far as a step line; one panel per seed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    seeds = sorted({r["seed"] for rows in results.values() for r in rows})
    figure, axes = pyplot.subplots(1, len(seeds), figsize=(6.5 * len(seeds), 4.2), squeeze=False, sharey=True)
    for ax, seed in zip(axes[0], seeds, strict=True):
        for competitor, rows in results.items():
            marks = next((r["marks"] for r in rows if r["seed"] == seed and r.get("marks")), None)
            if not marks:
                continue
            seconds, values = zip(*marks, strict=True)
            best = [max(values[: i + 1]) for i in range(len(values))]
            line, = ax.step(seconds, best, where="post", label=f"({competitor}) {NAMES[competitor]}")
            ax.plot(seconds, values, ".", color=line.get_color(), alpha=0.35)
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("seconds since the competitor's start")
        ax.set_xlim(0, args.budget)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (dots: each epoch; line: best so far)")
    low = min((v for rows in results.values() for r in rows for _, v in r.get("marks", [])), default=0.5)
    axes[0][0].set_ylim(max(low, 0.5), None)
    axes[0][-1].legend(loc="lower right", fontsize="small")
    size = f", {args.train_size:,} training images" if args.train_size else ""
    figure.suptitle(f"{Path(args.dataset).stem}{size}, {args.budget:.0f} s per competitor")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds per competitor")
    parser.add_argument("--train-size", type=int, metavar="N",
                        help="race on a stratified subset of N training images (the test split stays whole)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--competitors", nargs="+", default=["a", "b"], choices=sorted(RUNNERS))
    parser.add_argument("--json", help="also write every run's results to this file")
    parser.add_argument("--plot", metavar="PNG",
                        help="also draw each competitor's validation accuracy over time (needs matplotlib)")
    parser.add_argument("--tables", nargs="+", metavar="JSON",
                        help="print the table of earlier runs' --json files (merged) instead of racing")
    parser.add_argument("--tuner-args", default="", metavar="FLAGS",
                        help="extra `tuner search` flags for (a), to race a variant ('--batch-size 64')")
    parser.add_argument("--keep-stores", metavar="DIR",
                        help="keep each run's working folder (its store: DIR/a-seed0/...) to inspect its trials")
    parser.add_argument("--one", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return
    if args.tables:
        results: dict[str, list[dict]] = {}
        for path in args.tables:
            for competitor, rows in json.loads(Path(path).read_text()).items():
                results.setdefault(competitor, []).extend(rows)
        args.seeds = sorted({r["seed"] for rows in results.values() for r in rows})
        print(table(results, args))
        if args.plot:
            plot(results, args, args.plot)
        return
    with tempfile.TemporaryDirectory() as folder:
        if args.train_size:
            args.dataset = subset_dataset(args.dataset, args.train_size, Path(folder))
        results = race(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("\n" + table(results, args))
    if args.plot:
        plot(results, args, args.plot)


if __name__ == "__main__":
    main()
