"""Per-epoch time of our trial loop against a plain ``model.fit`` of the same model on the same arrays.

Our loop adds callbacks (best-epoch weights, per-epoch report and pruning check, early stopping,
NaN guard); this measures what they cost (the test evaluation after the fit is not counted). Each side builds a fresh model with
the same seed, warms up one epoch (graph tracing), then times ``--epochs`` epochs.

    python benchmarks/fit_overhead.py --dataset digits --space resnet --epochs 5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--space", default="resnet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras
    import keras_tuner

    from search_spaces import get_space
    from tuner._training import EpochReport
    from tuner._training import train_and_evaluate
    from tuner.data import load_dataset

    data = load_dataset(args.dataset)
    mean, variance = data.pixel_stats()

    def fresh_model():
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        space = get_space(args.space)(data.input_shape, data.classes, mean=mean, variance=variance)
        model = space.build(keras_tuner.HyperParameters())
        model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=1,
                  batch_size=args.batch_size, verbose=0)  # warm-up: tracing and compilation
        return model

    def plain() -> float:
        model = fresh_model()
        start = time.perf_counter()
        model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                  epochs=args.epochs, batch_size=args.batch_size, verbose=0)
        return (time.perf_counter() - start) / args.epochs

    def ours() -> float:
        model = fresh_model()
        result = train_and_evaluate(model, data, epochs=args.epochs, batch_size=args.batch_size,
                                    objective="val_accuracy", patience=args.epochs + 1,
                                    callbacks=[EpochReport(lambda epoch, logs: False)])
        return result.train_seconds / args.epochs  # the fit loop, without the test evaluation after it

    rows = {"plain model.fit": [], "tuner trial": []}
    for _ in range(args.repeats):
        rows["plain model.fit"].append(plain())
        rows["tuner trial"].append(ours())
    best = {name: min(times) for name, times in rows.items()}
    print(f"{args.space} defaults on {args.dataset} ({len(data.y_train)} training images, batch "
          f"{args.batch_size}), best of {args.repeats}, Keras {keras.__version__} ({keras.backend.backend()})")
    print("| loop | seconds per epoch | images per second |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.3f} | {len(data.y_train) / seconds:,.0f} |")
    print(f"ratio ours/plain (throughput): {best['plain model.fit'] / best['tuner trial']:.3f}")


if __name__ == "__main__":
    main()
