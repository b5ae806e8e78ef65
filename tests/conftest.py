"""Shared fixtures: every test is seeded, and every file lives under ``tmp_path``."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One thread per TensorFlow op: pytest-xdist already runs one test process per core, and the tests'
# models are too small to gain from more (inherited by the searches tests start as subprocesses).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The smallest member of each space, for tests that run whole searches.
TINY = {
    "resnet": ["depth=8", "filters=16", "kernel_size=3"],
    "densenet": ["blocks=depth", "depth=10", "growth_rate=8", "filters=16", "bottleneck=true"],
    "vgg": ["depth=8", "filters=16", "dense_units=128"],
    "resnet_imagenet": ["depth=18", "filters=16"],
    "inception": ["stage3_modules=1", "stage4_modules=1", "stage5_modules=1", "width=0.25", "stem_filters=16"],
}
TINY["auto"] = [f"{family}.{item}" for family, items in TINY.items() for item in items]  # every family small
POSTGRES_URL = os.environ.get("TUNER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def fake_trainer(values: Sequence[float] | None = None, *, seconds: float = 0.0,
                 fail: Mapping[int, BaseException] | None = None) -> Callable[..., Any]:
    """The one ``train_and_evaluate`` stand-in of the bookkeeping tests (patch
    ``tuner.training._trial.train_and_evaluate``): it trains nothing. Its k-th call (from 1) raises
    ``fail[k]`` where given; otherwise, after ``seconds``, each epoch reports to the callbacks an
    accuracy that grows with the learning rate, or the next of ``values`` (then its test accuracy too)."""
    from tuner.training._training import TrialResult

    given = None if values is None else iter(values)
    calls = itertools.count(1)

    def train(model, data, *, epochs=1, initial_epoch=0, callbacks=(), **_):
        call = next(calls)
        if fail and call in fail:
            raise fail[call]
        time.sleep(seconds)
        rate = model.optimizer.learning_rate
        lr = float(rate.numpy()) if hasattr(rate, "numpy") else 0.01
        fixed = None if given is None else next(given)
        logs = {}
        for callback in callbacks:
            callback.set_model(model)
        for epoch in range(initial_epoch, epochs):
            value = min(0.5 + lr + 0.01 * epoch, 1.0) if fixed is None else fixed
            logs = {"loss": 1.0, "val_accuracy": value, "val_loss": 1.0}
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
        return TrialResult(value=logs["val_accuracy"], best_epoch=epochs, epochs=epochs - initial_epoch,
                           train_seconds=seconds, params=model.count_params(), best_logs=logs, test_loss=1.0,
                           test_accuracy=0.5 if fixed is None else fixed, model=model)

    return train


@pytest.fixture(autouse=True)
def seed_everything(monkeypatch, tmp_path):
    """Seed Python, NumPy and Keras; run in ``tmp_path`` with no store from the environment."""
    random.seed(0)
    np.random.seed(0)
    try:
        import keras

        keras.utils.set_random_seed(0)
    except ImportError:
        pass
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def half_the_steps(request, monkeypatch):
    """In-process searches train digits at batch 32, not the automatic 16: half the optimizer steps
    (the TF suite took 549 s instead of 625 s). Tests of the automatic batch size itself are marked
    ``auto_batch``; worker subprocesses keep the real size."""
    if "auto_batch" not in request.keywords:
        monkeypatch.setattr("tuner.driver._search.MIN_STEPS_PER_EPOCH", 32)


@pytest.fixture
def tiny_space() -> Iterator[str]:
    """Registers ``tiny``, a one-hidden-layer Dense space that trains in a second, for tests of the
    search's bookkeeping that should still train real models; unregistered afterwards."""
    import keras

    from search_spaces import TunableSpace
    from search_spaces._declarations import declare_recipe
    from search_spaces._registry import SPACES
    from search_spaces._registry import register_space

    class TinyDense(TunableSpace):
        description = "flatten, one hidden Dense layer, softmax (tests only)"

        @classmethod
        def declare(cls, hp):
            return {"units": hp.Choice("units", [8, 16, 32], default=16), **declare_recipe(hp)}

        def architecture(self, values):
            inputs = keras.Input(self.input_shape)
            x = keras.layers.Flatten()(self.preprocess(inputs))
            x = keras.layers.Dense(values["units"], activation="relu")(x)
            return keras.Model(inputs, keras.layers.Dense(self.classes, activation="softmax")(x))

    register_space("tiny")(TinyDense)
    yield "tiny"
    del SPACES["tiny"]


@pytest.fixture(scope="session")
def _trained_folder(tmp_path_factory) -> Path:
    """One real search, trained once per test run: study ``d``, three ResNet-8 trials of two epochs on
    digits with label smoothing (a custom loss every export must handle), all three models kept.

    Under pytest-xdist the test processes share it: the first to need it trains it while holding a
    lock in the run's temporary folder, the others wait for it and read it."""
    import fcntl

    import tuner

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, above each test process's own
    folder = root / "trained"
    with open(root / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "trained.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            tuner.search("resnet", "digits", trials=3, epochs=2, study="d",
                         storage=f"sqlite:///{folder / 'tuner.db'}", overrides=TINY["resnet"], label_smoothing=0.1,
                         pruner="none", batch_size=32, seed=1, keep=3)
            (root / "trained.done").touch()
    return folder


@pytest.fixture
def trained_study(_trained_folder, tmp_path) -> str:
    """The URL of a copy, in ``tmp_path``, of the session's trained store and its kept models (as
    datasette's CLI tests share one database): tests read, export and change it freely."""
    shutil.copytree(_trained_folder, tmp_path, dirs_exist_ok=True)
    return f"sqlite:///{tmp_path / 'tuner.db'}"


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def postgres_available() -> str | None:
    """None if the PostgreSQL test server answers, else why not."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - any failure means "no server here"
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, sqlite_url) -> str:
    """Every store kind tuner supports; PostgreSQL is required when TUNER_REQUIRE_POSTGRES=1 (CI)."""
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL test server, which several machines' workers share; required when
    TUNER_REQUIRE_POSTGRES=1 (CI), the test skipped without it otherwise."""
    reason = postgres_available()
    if reason:
        if os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required (TUNER_REQUIRE_POSTGRES=1) but {POSTGRES_URL} fails: {reason}")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {reason}")
    return POSTGRES_URL


@pytest.fixture
def unique_name(request) -> str:
    """A study name no other test (or earlier run against a shared server) uses."""
    import uuid

    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def watch_trials(url: str, study: str, until: Callable[[list], bool], *, process: Any = None,
                 seconds: float = 240) -> list | None:
    """The trials of ``study`` once ``until(trials)`` holds, read every 0.2 s while another process
    works on it; None if ``process`` (a ``Popen``) ends or ``seconds`` pass first. One storage serves
    every read (one per read would leave a connection open each time, and PostgreSQL refuses
    clients past its ``max_connections``); a store or study not created yet reads as no trials."""
    deadline = time.monotonic() + seconds
    storage = None
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        time.sleep(0.2)
        try:
            storage = storage or optuna.storages.RDBStorage(url)
            trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - the store or the study is being created
            continue
        if until(trials):
            return trials
    return None


def undeclared_attributes(study) -> list[str]:
    """The user attributes of ``study`` and its trials that ``tuner.attributes`` does not declare
    (the stored-attributes reference page would not list them)."""
    from tuner.attributes import declared

    found = [f"study {name}" for name in study.user_attrs if not declared("study", name)]
    found += [f"trial {t.number} {name}" for t in study.trials for name in t.user_attrs if not declared("trial", name)]
    return found
