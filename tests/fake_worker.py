"""A search worker whose trials train nothing: for tests of how workers share a study's budget.

Usage: python fake_worker.py STORAGE_URL STUDY TRIALS
"""

from __future__ import annotations

import sys
import time

from conftest import fake_trainer

import tuner
import tuner.training._trial as trial_runner

if __name__ == "__main__":
    trial_runner.train_and_evaluate = fake_trainer(seconds=0.3)
    url, study, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tuner.search("resnet", "digits", trials=trials, study=study, storage=url, seed=int(time.time_ns() % 1000),
                 overrides=["depth=8"], pruner="none",
                 # Two workers starting a new study at once can both take its one enqueued trial (an
                 # Optuna race on SQLite, left to the reliability issue); this test is about the budget.
                 start_from_defaults=False)
