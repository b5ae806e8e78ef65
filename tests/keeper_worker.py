"""A worker that offers models to a ModelKeeper as fast as trials finish: for the test that races
four of them on one study (it imports no Keras, so the four start at once)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import optuna


class SlowModel:
    """Saves a few bytes, slowly: widens the window in which workers' offers overlap."""

    def save(self, path: str | Path) -> None:
        time.sleep(0.05)
        Path(path).write_bytes(b"a model")


def offer_trials(url: str, folder: str, name: str, worker: int, barrier) -> None:
    """Six trials, each offered to a keeper of two models and then told its value."""
    import functools

    from storage import exclusive
    from storage import open_artifact_store
    from tuner.models._models import ModelKeeper

    study = optuna.load_study(study_name=name, storage=url)
    keeper = ModelKeeper(open_artifact_store(url, folder, create=False), keep=2,
                         lock=functools.partial(exclusive, url))
    barrier.wait()  # every worker begins at once
    for i in range(6):
        trial = study.ask()
        value = random.Random(100 * worker + i).random()
        keeper.offer(trial, SlowModel(), value)
        study.tell(trial, value)
