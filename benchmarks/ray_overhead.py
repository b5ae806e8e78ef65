"""What Ray costs a search: the same small search through local worker processes and through Ray.

Runs the same search (the smallest ResNet on digits, one epoch a trial, ``--workers N``) in turn with
local processes (``tuner.search(workers=N)``) and as Ray tasks on a local Ray runtime
(``tuner.search(workers=N, ray="local")``, the runtime's start included), each into its own store, and
prints the wall time, the trials per minute and Ray's overhead per trial, round by round.

    python benchmarks/ray_overhead.py --trials 40 --workers 2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OVERRIDES = ["depth=8", "filters=16", "kernel_size=3"]
MODES = {"local processes": None, "Ray tasks": "local"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="searches per mode, alternating")
    args = parser.parse_args()

    import optuna

    import tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for mode, ray in MODES.items():
                url = f"sqlite:///{folder}/{mode.split()[0]}-{round_}.db"
                start = time.perf_counter()
                study = tuner.search("resnet", "digits", trials=args.trials, epochs=1, workers=args.workers,
                                     ray=ray, storage=url, seed=round_, keep=0, overrides=OVERRIDES,
                                     pruner="none", start_from_defaults=False)
                took = time.perf_counter() - start
                done = sum(t.state.name == "COMPLETE" for t in study.trials)
                seconds[mode].append(took)
                print(f"round {round_} {mode:15s}: {took:6.1f} s, {done} trials complete, "
                      f"{60 * done / took:5.1f} trials/min", flush=True)
    local, ray_ = (statistics.median(seconds[mode]) for mode in MODES)
    print(f"median: local processes {local:.1f} s, Ray tasks {ray_:.1f} s; Ray's overhead "
          f"{ray_ - local:+.1f} s a search, {(ray_ - local) / args.trials:+.2f} s a trial")


if __name__ == "__main__":
    main()
