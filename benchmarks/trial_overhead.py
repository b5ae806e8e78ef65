"""A trial's fixed cost on TensorFlow: time to train with the train step traced twice or once.

Keras on TensorFlow (without a distribution strategy) creates the optimizer's and the compiled
metrics' variables while tracing the first train step, and a ``tf.function`` that creates variables is
traced twice. ``tuner.training._training.build_training_state`` creates them first from one small batch. This
runs the same trials (same seeds, so the same accuracies) alternately without and with it, in one
process, and prints each trial's wall time and the median per model and mode.

    python benchmarks/trial_overhead.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = {
    "ResNet-8x16": ("resnet", ["depth=8", "filters=16", "kernel_size=3"]),
    "DenseNet-40": ("densenet", ["depth=40"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="trials per model and mode")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    import keras
    import optuna

    import tuner
    import tuner.training._training as training

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("this measures TensorFlow's tracing: run it with KERAS_BACKEND=tensorflow")
    prebuild = training.build_training_state
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/overhead.db"
        tuner.search("resnet", "digits", trials=1, epochs=1, study="warm-up", storage=url, keep=0,
                     overrides=MODELS["ResNet-8x16"][1])  # first-use costs out of the way
        for round_ in range(args.rounds):
            for label, (space, overrides) in MODELS.items():
                for mode in ("traced twice", "traced once"):
                    training.build_training_state = prebuild if mode == "traced once" else (lambda *a: None)
                    start = time.perf_counter()
                    study = tuner.search(space, "digits", trials=1, epochs=args.epochs, seed=round_, keep=0,
                                         study=f"{label}-{mode}-{round_}", storage=url, overrides=overrides,
                                         pruner="none", start_from_defaults=False)
                    seconds = time.perf_counter() - start
                    times.setdefault((label, mode), []).append(seconds)
                    print(f"{label:12s} {mode:13s} round {round_}: {seconds:5.1f} s, "
                          f"val_accuracy {study.trials[0].value:.4f}", flush=True)
    training.build_training_state = prebuild
    print("\nmedian seconds a trial (digits, batch 16, "
          f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}, search included):")
    for label in MODELS:
        twice, once = (statistics.median(times[label, m]) for m in ("traced twice", "traced once"))
        print(f"  {label:12s} traced twice {twice:5.1f} s   traced once {once:5.1f} s   saved {twice - once:4.1f} s")


if __name__ == "__main__":
    main()
