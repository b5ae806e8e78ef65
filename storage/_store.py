"""Opening the store and its studies safely: bad files are refused untouched, studies never merge."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import warnings
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from storage._owners import OwnedStorage
from storage._owners import RetryOnce
from storage._resilient import Outage
from storage._resilient import ResilientStorage
from storage._resilient import first_line
from storage._resilient import retry
from tuner.errors import StoreUnreachable
from tuner.errors import TunerError

DEFAULT_STORAGE = "sqlite:///tuner.db"
STORAGE_ENV = "TUNER_STORAGE"
SQLITE_MAGIC = b"SQLite format 3\x00"
# Seconds a SQLite writer waits for another's lock before "database is locked".
SQLITE_BUSY_TIMEOUT = 60
# A running trial's heartbeat, and how long a silent one lives before it is failed (seconds).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
# libpq's settings for a search's connections to PostgreSQL: a server that is gone (a fail-over that
# left connections half-open) fails a call within seconds instead of the system's 15 minutes.
PG_TIMEOUTS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
               "keepalives_count": 3, "tcp_user_timeout": 30_000}
# Tries at opening a store whose tables another worker is creating at the same moment.
CREATE_ATTEMPTS = 5
# What the loser of that race sees, from SQLite and PostgreSQL (tables, then Alembic's version row).
CREATE_RACE_MARKERS = ("already exists", "UNIQUE constraint failed", "duplicate key")
# Seconds to wait for the creator of a new, empty study to record what it is for.
IDENTITY_WAIT = 10
# Study attributes that must match for a run to continue an existing study.
IDENTITY_ATTRS = ("space", "dataset", "objective", "backend", "algorithm", "overrides")


class StoreError(TunerError):
    """The store cannot be opened or used: not a database, corrupt, unreachable, incompatible."""


class StudyMismatchError(StoreError):
    """A study name is reused for a different search (space, dataset, objective, backend...)."""


def storage_url(url: str | None = None) -> str:
    """The storage URL to use: ``url``, else ``$TUNER_STORAGE``, else ``sqlite:///tuner.db``."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def unreachable(url: str | None, patience: float) -> StoreUnreachable:
    """The error a search stops with once the store at ``url`` was away for ``patience`` seconds."""
    return Outage(storage_url(url), patience).unreachable()


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for other databases and in-memory SQLite."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise StoreError(f"not a database URL: {url!r} ({err})") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_sqlite_file(path: Path, *, must_exist: bool) -> None:
    """Refuse, without writing to it, a path that is not a SQLite database."""
    if not path.exists():
        if must_exist:
            raise StoreError(f"no store at {path}: run `tuner search` first or pass --storage")
        if not path.parent.exists():
            raise StoreError(f"cannot create the store {path}: folder {path.parent} does not exist")
        return
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a SQLite database")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_MAGIC))
    if header and header != SQLITE_MAGIC:
        raise StoreError(f"{path} is not a SQLite database (left untouched)")


def open_storage(
    url: str | None = None, *, must_exist: bool = False, heartbeat: bool = False, patience: float | None = None
) -> optuna.storages.RDBStorage:
    """Open Optuna's RDB storage at ``url`` (see ``storage_url``), tuned for several writers.

    ``must_exist`` is for read-only commands: they should not create an empty database.
    ``heartbeat`` is for workers: a running trial beats every ``HEARTBEAT_INTERVAL`` seconds; one
    whose worker died (kill -9, power loss) is turned to FAIL once it misses ``GRACE_PERIOD``
    seconds of beats, when any worker starts its next trial, and its parameters are retried once.
    ``patience`` is for searches: every call waits, retrying, for a database that is unreachable for up
    to that many seconds (``ResilientStorage``), and a worker's silence is tolerated that much longer.
    Any failure is a ``StoreError`` with one line of explanation.
    """
    url = storage_url(url)
    path = sqlite_path(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        check_sqlite_file(path, must_exist=must_exist)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if patience is not None and make_url(url).get_driver_name() in ("psycopg", "psycopg2"):
            engine_kwargs["connect_args"] = PG_TIMEOUTS  # a dead connection fails, it does not hang
    storage_kwargs: dict[str, Any] = {}
    if heartbeat:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage_kwargs = {
                "heartbeat_interval": HEARTBEAT_INTERVAL,
                # A worker waiting for the store beats no more than the others can read its beats.
                "grace_period": GRACE_PERIOD + int(patience or 0),
                "heartbeat_stale_trial_callback": RetryOnce(),
            }
    storage = _create_storage(url, engine_kwargs, storage_kwargs, patience)
    if path is not None:
        _use_write_ahead_log(path)
        _begin_immediate(storage.engine)
        storage.engine.dispose()  # pooled connections opened before use neither
    return storage


def _create_storage(
    url: str, engine_kwargs: dict[str, Any], storage_kwargs: dict[str, Any], patience: float | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage (``ResilientStorage`` with a ``patience``, waiting that long for a database
    that is away; a worker's, with heartbeats, an ``OwnedStorage``, recording who runs each trial);
    workers that create a new store's tables at the same moment retry."""

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if patience is None:
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **storage_kwargs)
            kind = OwnedStorage if "heartbeat_interval" in storage_kwargs else ResilientStorage
            return kind(url, patience=patience, engine_kwargs=engine_kwargs, **storage_kwargs)

    for attempt in range(CREATE_ATTEMPTS):
        try:
            if patience is None:
                return create()
            return retry(create, Outage(url, patience), sqlite=sqlite_path(url) is not None, opening=True)
        except sqlalchemy.exc.SQLAlchemyError as err:
            racing = any(marker in str(err) for marker in CREATE_RACE_MARKERS)
            if not racing or attempt == CREATE_ATTEMPTS - 1:
                raise StoreError(f"cannot open the store {url}: {first_line(err)}") from None
            time.sleep(0.2 * (attempt + 1))  # another worker is creating the schema
        except (RuntimeError, ValueError, ImportError) as err:
            raise StoreError(f"cannot open the store {url}: {first_line(err)}") from None
    raise AssertionError("unreachable")


def _use_write_ahead_log(path: Path) -> None:
    """WAL lets readers (the dashboard) and several writers share a SQLite file; it persists in the file.
    """
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """Make every transaction on a SQLite ``engine`` take the write lock when it begins.

    Python's sqlite3 starts a transaction only at the first write, so a read-then-write such as
    Optuna's "take the enqueued trial if it is still WAITING" is not atomic: two processes both read
    WAITING and both run the trial (SQLite ignores ``SELECT ... FOR UPDATE``). ``BEGIN IMMEDIATE``
    serialises such transactions; the busy timeout makes the others wait instead of failing.
    (SQLAlchemy's documented recipe for pysqlite's transaction handling.)
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of every study in the store, in creation order."""
    return [s.study_name for s in storage.get_all_studies()]


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    direction: str | Sequence[str],
    attrs: Mapping[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    first_trials: Sequence[Mapping[str, Any]] = (),
) -> optuna.Study:
    """Create the study ``name`` with ``attrs``, or continue it if it was made for the same search.

    A study made for another space, dataset, objective, direction or backend raises
    ``StudyMismatchError`` instead of silently mixing trials; so does a study tuner did not create.
    ``direction`` is one direction, or one per objective of a multi-objective study.
    Only the process that creates the study enqueues ``first_trials``, so commands started at the
    same moment on a new study run it once. A process that joins an existing study reseeds
    ``sampler``: seeded afresh, it would propose the start-up values the study already tried.
    """
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=_directions(direction),  # type: ignore[arg-type]
                                    sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _wait_for_identity(study)
        check_same_search(study, direction=direction, attrs=attrs)
        if sampler is not None:
            sampler.reseed_rng()
        return study
    for values in first_trials:
        study.enqueue_trial(dict(values))
    # The identity goes last, "space" (the mark of a tuner study) last of all: a process that
    # finds "space" finds the whole identity and the first trial too.
    for key, value in sorted(attrs.items(), key=lambda item: item[0] == "space"):
        study.set_user_attr(key, value)
    return study


def _wait_for_identity(study: optuna.Study, seconds: float = IDENTITY_WAIT) -> None:
    """Give the process that created ``study`` a moment to write its identity.

    Until it has, the study holds at most the creator's queued first trial (WAITING): a study with
    any other trial and no identity was not made by tuner, and is refused at once.
    """
    started = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    deadline = time.monotonic() + seconds
    while ("space" not in study.user_attrs and not study.get_trials(deepcopy=False, states=started)
           and time.monotonic() < deadline):
        time.sleep(0.1)


def _directions(direction: str | Sequence[str]) -> list[str]:
    return [direction] if isinstance(direction, str) else list(direction)


def check_same_search(study: optuna.Study, *, direction: str | Sequence[str], attrs: Mapping[str, Any]) -> None:
    """Raise ``StudyMismatchError`` unless ``study`` was created for the search ``attrs`` describe."""
    stored = study.user_attrs
    if "space" not in stored:
        raise StudyMismatchError(
            f"study {study.study_name!r} was not created by tuner; choose another --study name"
        )
    stored_directions = [d.name.lower() for d in study.directions]
    if stored_directions != _directions(direction):
        raise StudyMismatchError(
            f"study {study.study_name!r} {'/'.join(stored_directions)}s its objectives, this search would "
            f"{'/'.join(_directions(direction))} them; use another --study name"
        )
    for key in IDENTITY_ATTRS:
        if key in attrs and stored.get(key) != attrs[key]:
            raise StudyMismatchError(
                f"study {study.study_name!r} was created with {key}={stored.get(key)!r}, not "
                f"{attrs[key]!r}; run with the same settings to continue it, or use another --study name"
            )
