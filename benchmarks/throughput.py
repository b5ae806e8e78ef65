"""Training images per second: inside a real trial of tuner's driver, and in a plain ``model.fit``.

For each named configuration, each Keras backend installed (TensorFlow, JAX, PyTorch; each in its own
process, since the backend is chosen at import) and each precision, it runs

- **ours**: ``tuner.search`` with the configuration fixed by ``--set``, one trial of ``--epochs``
  epochs through the whole driver (Optuna study in SQLite, pruning reports, best-epoch weights, early
  stopping, NaN guard), timed from the progress line each epoch prints;
- **plain**: the same model (``build`` with the same values) fitted with ``model.fit`` on the same
  arrays, batch size and validation data, timed per epoch by a callback;

drops the first epoch of each (tracing and compilation) and reports the median of the rest as
images per second of training data (validation is inside each epoch on both sides), and the ratio
ours/plain. The data are random uint8 images (``--images`` of them, 10 classes), so no download.

    python benchmarks/throughput.py                                  # CPU-sized defaults
    python benchmarks/throughput.py --configs resnet20 resnet56 densenet-bc100 --images 50000 \\
        --batch-size 512 --precisions float32 mixed_bfloat16          # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import util
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Named configurations: the space and the --set values that fix every architecture choice.
CONFIGS = {
    "resnet8": ("resnet", {"depth": 8, "filters": 16, "stem_stride": 1, "version": "v1"}),
    "resnet20": ("resnet", {"depth": 20, "filters": 16, "stem_stride": 1, "version": "v1"}),
    "resnet56": ("resnet", {"depth": 56, "filters": 16, "stem_stride": 1, "version": "v1"}),
    "densenet-bc40": ("densenet", {"depth": 40, "growth_rate": 12, "bottleneck": True, "compression": 0.5}),
    "densenet-bc100": ("densenet", {"depth": 100, "growth_rate": 12, "bottleneck": True, "compression": 0.5}),
}
# Everything else fixed too, so both sides train the same model with the same recipe.
RECIPE = {"kernel_size": 3, "dropout": 0.0, "l2": 1e-4, "optimizer": "sgd", "learning_rate": 0.05,
          "lr_schedule": "cosine"}
BACKENDS = ("tensorflow", "jax", "torch")


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if util.find_spec(b) is not None]


def write_dataset(path: Path, images: int, size: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    n_val = max(images // 10, 64)
    np.savez(path,
             x_train=rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, images), x_val=rng.integers(0, 256, (n_val, size, size, 3), dtype=np.uint8),
             y_val=rng.integers(0, 10, n_val), x_test=rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 64))


def measure_ours(dataset: str, space: str, values: dict, args: argparse.Namespace, precision: str,
                 workdir: Path) -> list[float]:
    """Seconds of each epoch of one trial run by ``tuner.search``."""
    import tuner
    from tuner import _progress

    stamps: list[float] = []
    original = _progress.SearchProgress.epoch_ended

    def stamped(self, number, epoch, logs):
        stamps.append(time.perf_counter())
        original(self, number, epoch, logs)

    _progress.SearchProgress.epoch_ended = stamped
    started = []
    original_start = _progress.SearchProgress.trial_started

    def start(self, number, params, epochs=None):
        started.append(time.perf_counter())  # after the model is built, just before fit
        original_start(self, number, params, epochs)

    _progress.SearchProgress.trial_started = start
    try:
        tuner.search(space, dataset, trials=1, epochs=args.epochs, batch_size=args.batch_size,
                     study=f"{space}-{precision}-{time.time_ns()}", storage=f"sqlite:///{workdir / 'bench.db'}",
                     pruner="none", patience=0, keep=0, precision=precision, augment="flip_shift",
                     overrides=[f"{k}={v}" for k, v in values.items()], start_from_defaults=False)
    finally:
        _progress.SearchProgress.epoch_ended = original
        _progress.SearchProgress.trial_started = original_start
    edges = started[-1:] + stamps
    return [b - a for a, b in zip(edges, edges[1:])]


def measure_plain(dataset: str, space: str, values: dict, args: argparse.Namespace, precision: str) -> list[float]:
    """Seconds of each epoch of ``model.fit`` on the same arrays and model."""
    import math

    import keras

    from search_spaces import get_space
    from tuner.data import load_dataset

    class Stamps(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.edges: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.edges.append(time.perf_counter())

    data = load_dataset(dataset)
    mean, variance = data.pixel_stats()
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    steps = args.epochs * math.ceil(len(data.y_train) / args.batch_size)
    hypermodel = get_space(space)(data.input_shape, data.classes, mean=mean, variance=variance,
                                  augment="flip_shift", train_steps=steps)
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    model = hypermodel.build(hp)
    stamps = Stamps()
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=args.epochs,
              batch_size=args.batch_size, callbacks=[stamps], verbose=0)
    edges = [start, *stamps.edges]
    return [b - a for a, b in zip(edges, edges[1:])]


def child(args: argparse.Namespace) -> None:
    """Measure every configuration and precision on this process's backend; print JSON rows."""
    import keras
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        dataset = workdir / "random.npz"
        write_dataset(dataset, args.images, args.size)
        for name in args.configs:
            space, arch = CONFIGS[name]
            values = {**RECIPE, **arch}
            for precision in args.precisions:
                ours, plain = [], []
                for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
                    plain += measure_plain(str(dataset), space, values, args, precision)[1:]
                    ours += measure_ours(str(dataset), space, values, args, precision, workdir)[1:]
                rows.append({"config": name, "backend": keras.backend.backend(), "precision": precision,
                             "ours": args.images / statistics.median(ours),
                             "plain": args.images / statistics.median(plain)})
                print(f"{name} {precision}: plain {plain}, ours {ours}", file=sys.stderr, flush=True)
    print("ROWS " + json.dumps(rows))


def device_line() -> str:
    import platform

    return f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["resnet8", "resnet20",
                                                                                 "densenet-bc40"])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: every installed backend")
    parser.add_argument("--precisions", nargs="+", default=["float32"])
    parser.add_argument("--images", type=int, default=2048, help="training images (random, 10 classes)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32: 32x32x3)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not counted")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for backend in args.backends or installed_backends():
        argv = [a for a in sys.argv[1:] if a != "--child"]
        result = subprocess.run([sys.executable, __file__, *argv, "--child"], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "KERAS_BACKEND": backend})  # progress on stderr
        found = [line for line in result.stdout.splitlines() if line.startswith("ROWS ")]
        if result.returncode or not found:
            print(f"{backend}: failed (exit {result.returncode}); its error is printed above")
            continue
        rows += json.loads(found[-1][5:])
    print(f"{args.images} random {args.size}x{args.size}x3 images, batch {args.batch_size}, median of epochs "
          f"2..{args.epochs} over {args.repeats} runs each; {device_line()}")
    print("| config | backend | precision | plain model.fit (images/s) | tuner trial (images/s) | ours/plain |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['backend']} | {row['precision']} | {row['plain']:,.0f} | "
              f"{row['ours']:,.0f} | {row['ours'] / row['plain']:.3f} |")


if __name__ == "__main__":
    main()
