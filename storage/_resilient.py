"""A store that outlives its database's outages: a restart, a fail-over, a network blip, a SQLite
file locked for longer than its busy timeout.

``ResilientStorage`` is Optuna's ``RDBStorage`` with every call retried, with backoff, while the
database is unreachable, for up to ``patience`` seconds from the outage's first failed call. The
first failure says so in one line ("store ... unreachable, retrying for up to N s"), the return in
another. Past ``patience`` every call raises ``StoreUnreachable`` at once: the search stops, and its
trial in flight is failed by the owner rule when the same command runs again.

While a trial trains (``while_training``), its reports do not wait for the store: once a call has
found it away, writes are queued in order and written, exactly once, by the next call that reaches
the database, and reads (the pruner's) raise ``StoreAway`` at once, so the trial goes on unpruned;
the trial's heartbeat, every 10 s, finds out when the store is back (a beat is never retried). A
trial that finished while the store was away is written when it returns; past ``patience``, its
next report stops it.

Optuna's own code calls private methods of ``RDBStorage`` (``_get_trials`` behind ``study.get_trials``,
``_set_trial_param`` behind ``trial.suggest_*``, ...): every method of it is retried but the few that
do not reach the database (``tests/test_outage.py`` runs a whole trial through an outage).
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from tuner.errors import STORE_TIMEOUT
from tuner.errors import StoreUnreachable
from tuner.errors import TunerError

# Seconds between tries: doubling from the first to the last.
FIRST_RETRY, LAST_RETRY = 0.5, 5.0
# SQLite's errors that pass (a lock held too long, a file on a network share briefly gone); its other
# operational errors (no such table...) are the store's own and raised at once. When the store is
# first opened only a lock passes: a file that cannot be opened then is a wrong path.
SQLITE_LOCKED = "database is locked"
SQLITE_OUTAGES = (SQLITE_LOCKED, "unable to open database file", "disk i/o error")
# What a database server that answers says to a wrong URL (PostgreSQL's, MySQL's): raised at once.
REFUSALS = ("password authentication failed", "no pg_hba.conf entry", "does not exist",
            "could not translate host name", "access denied", "unknown database")
# Writes that a training trial queues while the store is away.
DEFERRABLE = ("set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr")
# RDBStorage's methods that do not reach the database; every other one is retried, the private ones
# too: Optuna's ``_CachedStorage`` (in front of every RDBStorage a study uses) calls five of them.
LOCAL = ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "remove_session")
RETRIED = tuple(name for name, value in vars(optuna.storages.RDBStorage).items()
                if inspect.isfunction(value) and not name.startswith("__") and name not in LOCAL)


class StoreAway(TunerError):
    """A read while a trial trains and the store is away: the caller goes on without its answer."""


def is_outage(err: BaseException, sqlite: bool, opening: bool = False) -> bool:
    """Whether ``err`` (or an error it was raised from) says the database is unreachable, not wrong
    (``REFUSALS``); ``opening``: the store's first connection, where a SQLite file that cannot be
    opened is a wrong path."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            text = str(seen).lower()
            if sqlite:
                return any(marker in text for marker in ((SQLITE_LOCKED,) if opening else SQLITE_OUTAGES))
            if any(marker in text for marker in REFUSALS):
                return False
            return seen.connection_invalidated or isinstance(
                seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
        seen = seen.__cause__ or seen.__context__
    return False


def shown_url(url: str) -> str:
    """``url`` without its password, to name the store in a message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def outage_reason(err: BaseException) -> str:
    """What the database driver said about an outage (Optuna's wrapper blames "invalid data")."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError):
            return first_line(seen.orig if seen.orig is not None else seen)
        seen = seen.__cause__ or seen.__context__
    return first_line(err)


def say(line: str) -> None:
    print(f"tuner: {line}", file=sys.stderr, flush=True)


class Outage:
    """How long the store has been away, across the threads that call it (a trial's heartbeat runs in
    its own); says when it goes and when it returns, once each."""

    def __init__(self, url: str, patience: float, announce: Callable[[str], None] = say) -> None:
        self.url, self.patience, self.announce = shown_url(url), patience, announce
        self.since: float | None = None
        self.gave_up = False
        self._lock = threading.Lock()

    def failed(self, err: BaseException) -> float:
        """Record a failed call; the seconds to wait before the next try (the outage's remaining time
        caps it); raises ``StoreUnreachable`` once the outage has lasted ``patience``."""
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.announce(f"store {self.url} unreachable ({outage_reason(err)}), retrying for up to "
                              f"{self.patience:.0f} s")
            elapsed = now - self.since
            if elapsed >= self.patience:
                self.gave_up = True
                raise self.unreachable(err)
        return min(FIRST_RETRY * 2 ** min(elapsed, 8), LAST_RETRY, self.patience - elapsed)

    def passed(self) -> None:
        """Record a call that reached the database."""
        if self.since is None:
            return
        with self._lock:
            if self.since is not None:
                self.announce(f"store {self.url} reachable again after {time.monotonic() - self.since:.0f} s")
                self.since = None

    def unreachable(self, err: BaseException | None = None) -> StoreUnreachable:
        cause = f" ({outage_reason(err)})" if err is not None else ""
        return StoreUnreachable(
            f"store {self.url} unreachable for {self.patience:.0f} s{cause}; the search stopped: run the "
            "same command again when the store is back (it fails the trial in flight and retries it)")


def retry(call: Callable[[], Any], outage: Outage, sqlite: bool, opening: bool = False) -> Any:
    """``call()``, tried again while its errors are an outage (``is_outage``), until ``outage`` gives up."""
    while True:
        try:
            result = call()
        except Exception as err:
            if not is_outage(err, sqlite, opening):
                raise
            time.sleep(outage.failed(err))
            continue
        outage.passed()
        return result


class ResilientStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls survive an outage of the database; see the module docstring."""

    def __init__(self, url: str, *, patience: float = STORE_TIMEOUT, **kwargs: Any) -> None:
        self.sqlite = make_url(url).get_backend_name() == "sqlite"
        self.outage = Outage(url, patience)
        self._pending: collections.deque[tuple[str, tuple, dict]] = collections.deque()
        self._pending_lock = threading.Lock()
        self._local = threading.local()  # per thread: ``depth`` of calls in progress, ``training``
        super().__init__(url, **kwargs)

    @contextlib.contextmanager
    def while_training(self) -> Iterator[None]:
        """Within it, this thread's deferrable writes queue while the store is away and its reads
        raise ``StoreAway`` (see the module docstring)."""
        self._local.training = True
        try:
            yield
        finally:
            self._local.training = False

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        method = getattr(super(), name)
        if getattr(self._local, "depth", 0):  # called by another method of this storage: it retries
            return method(*args, **kwargs)
        self._local.depth = 1
        try:
            return self._retried_call(name, method, args, kwargs)
        finally:
            self._local.depth = 0

    def _retried_call(self, name: str, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        beat = name == "record_heartbeat"  # not retried: the next beat comes ``heartbeat_interval`` s later
        if self.outage.gave_up:
            if beat:
                return None  # the heartbeat's thread stops quietly; the search is stopping
            raise self.outage.unreachable()
        training = getattr(self._local, "training", False)
        if training and self.outage.since is not None:  # away: a training trial does not wait for it
            return self._while_away(name, args, kwargs)
        failed_before = False
        while True:
            try:
                self._flush()
                result = method(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A tell whose commit landed just before the connection dropped: it was written once.
                if failed_before and name == "set_trial_state_values" and retry(
                        lambda: self._landed(*args, **kwargs), self.outage, self.sqlite):
                    return True
                raise
            except Exception as err:
                if not is_outage(err, self.sqlite):
                    raise
                failed_before = True
                try:
                    wait = self.outage.failed(err)  # announces the outage; raises past its bound
                except StoreUnreachable:
                    if beat:
                        return None
                    raise
                if beat:
                    return None
                if training:
                    return self._while_away(name, args, kwargs)
                time.sleep(wait)
                continue
            self.outage.passed()
            return result

    def _while_away(self, name: str, args: tuple, kwargs: dict) -> None:
        """A training trial's call while the store is away: a deferrable write is queued, a read refused."""
        if name not in DEFERRABLE:
            raise StoreAway(f"store {self.outage.url} is away")
        with self._pending_lock:
            self._pending.append((name, args, kwargs))

    def _flush(self) -> None:
        """Write the queued writes, in order, each once. A write the store refuses for another reason
        than an outage (its trial was failed meanwhile...) is dropped; an outage stops the flush."""
        while self._pending:
            with self._pending_lock:
                if not self._pending:
                    return
                name, args, kwargs = self._pending[0]
                try:
                    getattr(super(), name)(*args, **kwargs)
                except Exception as err:
                    if is_outage(err, self.sqlite):
                        raise
                    if not isinstance(err, optuna.exceptions.UpdateFinishedTrialError):
                        self.outage.announce(f"a report queued while the store was away was dropped "
                                             f"({first_line(err)})")
                self._pending.popleft()

    def _landed(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        return super().get_trial(trial_id).state == state


@contextlib.contextmanager
def while_training(storage: optuna.storages.BaseStorage) -> Iterator[None]:
    """``ResilientStorage.while_training`` for a storage that is one; nothing for others."""
    if not isinstance(storage, ResilientStorage):
        yield
        return
    with storage.while_training():
        yield


def gave_up(storage: optuna.storages.BaseStorage) -> StoreUnreachable | None:
    """The error to stop with if ``storage`` gave up waiting for its database (None: it did not)."""
    if isinstance(storage, ResilientStorage) and storage.outage.gave_up:
        return storage.outage.unreachable()
    return None


def _retried(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``RDBStorage.{name}``, through an outage of the database."
    return method


for _name in RETRIED:
    setattr(ResilientStorage, _name, _retried(_name))
