"""Resident memory of one search process, trial after trial: does it grow with the trial count?

Runs a study of tiny models (ResNet-8/14 on digits, 1 epoch) and prints the resident set size after
each trial, then RSS after trial 30 minus after trial 5 (target: under 100 MB). With
``--recycle-after N`` the trials run in child processes of N trials each, and it prints the peak RSS
of any of them instead.

    python benchmarks/memory_growth.py --trials 30
    python benchmarks/memory_growth.py --trials 30 --recycle-after 10
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--recycle-after", type=int, default=0,
                        help="run trials in child processes that exit after N trials (0: in this process)")
    args = parser.parse_args()

    import optuna

    import tuner
    import tuner.backends._optuna as backend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    after: list[float] = []
    run_trial = backend.run_trial

    def measured(job, trial):
        try:
            return run_trial(job, trial)
        finally:
            after.append(rss_mb())

    backend.run_trial = measured
    with tempfile.TemporaryDirectory() as tmp:
        tuner.search("resnet", "digits", trials=args.trials, epochs=1, pruner="none",
                     storage=f"sqlite:///{tmp}/m.db", artifacts=f"{tmp}/artifacts",
                     overrides=["depth=8,14", "filters=16,32"], recycle_after=args.recycle_after or None)
    if args.recycle_after:
        import resource

        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"{args.trials} trials in processes of {args.recycle_after}: peak RSS of any trial process "
              f"{child_peak:.1f} MB; this process now {rss_mb():.1f} MB")
        return
    for number, mb in enumerate(after, 1):
        print(f"after trial {number:3d}: {mb:7.1f} MB")
    if len(after) >= 30:
        print(f"RSS after trial 30 minus after trial 5: {after[29] - after[4]:+.1f} MB")


if __name__ == "__main__":
    main()
