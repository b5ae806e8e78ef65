"""Shared fixtures: every test is seeded, and every file lives under ``tmp_path``."""

from __future__ import annotations

import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The smallest member of each space, for tests that run whole searches.
TINY = {
    "resnet": ["depth=8", "filters=16", "kernel_size=3"],
    "densenet": ["depth=10", "growth_rate=8", "filters=16", "bottleneck=true"],
}
POSTGRES_URL = os.environ.get("TUNER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


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
        monkeypatch.setattr("tuner._search.MIN_STEPS_PER_EPOCH", 32)


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
    if request.param == "sqlite":
        return sqlite_url
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
