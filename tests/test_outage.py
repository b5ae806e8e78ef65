"""A store that goes away: calls wait for it, training does not, and past ``--store-timeout`` the
search stops with one line and exit code 3.

The first tests inject SQLite's "database is locked" into a store's connection; the last ones put a
TCP proxy the test owns between a real search and the PostgreSQL server, and cut it.
"""

from __future__ import annotations

import collections
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy
from conftest import POSTGRES_URL
from conftest import TINY
from conftest import postgres_available
from conftest import watch_trials

from storage import StoreAway
from storage import StoreError
from storage import gave_up
from storage import open_storage
from storage import while_training
from storage._owners import OWNER_ATTR
from storage._owners import this_process
from tuner._compat import trial_id_of
from tuner.errors import StoreUnreachable

# Trials asked for outside study.optimize, on a store with heartbeats (as a search opens it).
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


class Fault:
    """Makes every statement on ``store`` fail as a locked SQLite file does, while ``on``."""

    def __init__(self, store: optuna.storages.RDBStorage) -> None:
        self.on = False
        sqlalchemy.event.listen(store.engine, "before_cursor_execute", self._execute)

    def _execute(self, *_args: object) -> None:
        if self.on:
            raise sqlite3.OperationalError("database is locked")

    def for_seconds(self, seconds: float) -> None:
        """Fail from now on, for ``seconds``."""
        self.on = True
        threading.Timer(seconds, lambda: setattr(self, "on", False)).start()


@pytest.fixture
def flaky(sqlite_url):
    """A search's store (30 s of patience), its study, and the fault that takes it away."""
    store = open_storage(sqlite_url, heartbeat=True, patience=30)
    study = optuna.create_study(storage=store, study_name="s")
    return store, study, Fault(store)


def test_a_call_waits_for_the_store_and_says_so_once(flaky, capsys):
    store, study, fault = flaky
    study.enqueue_trial({"x": 1})
    fault.for_seconds(1.5)
    started = time.monotonic()
    assert len(study.get_trials()) == 1
    assert time.monotonic() - started >= 1.5
    err = capsys.readouterr().err
    assert err.count("unreachable (database is locked), retrying for up to 30 s") == 1
    assert err.count("reachable again") == 1


def test_a_training_trial_queues_its_writes_and_trains_on(flaky):
    store, study, fault = flaky
    trial = study.ask()
    fault.on = True
    started = time.monotonic()
    with while_training(store):
        trial.report(0.5, 1)
        trial.set_user_attr("note", "written later")
        trial.report(0.6, 2)
        with pytest.raises(StoreAway):
            trial.should_prune()
    assert time.monotonic() - started < 1.0  # nothing waited
    fault.for_seconds(1.0)
    study.tell(trial, 0.7)  # waits, then writes the queued writes, in order, then the result
    stored = study.get_trials()[0]
    assert stored.state.name == "COMPLETE" and stored.value == 0.7
    assert stored.intermediate_values == {1: 0.5, 2: 0.6}
    assert stored.user_attrs == {"note": "written later", OWNER_ATTR: this_process()}  # the owner: as asked


def test_past_its_patience_the_store_fails_every_call_at_once(sqlite_url):
    store = open_storage(sqlite_url, heartbeat=True, patience=1)
    study = optuna.create_study(storage=store, study_name="s")
    trial = study.ask()
    Fault(store).on = True
    with pytest.raises(StoreUnreachable, match=r"unreachable for 1 s \(database is locked\).*same command"):
        study.get_trials()
    started = time.monotonic()
    with pytest.raises(StoreUnreachable):
        study.get_trials()
    assert store.record_heartbeat(trial_id_of(trial)) is None  # the heartbeat's thread ends quietly
    assert time.monotonic() - started < 0.5
    assert isinstance(gave_up(store), StoreUnreachable)


def test_a_heartbeat_is_not_retried_and_a_training_trial_waits_for_none(flaky, capsys):
    """While the store is away a beat is skipped (the next one comes 10 s later), and once a call
    found it away, a training trial's calls do not touch the database: nothing waits, not even
    SQLite's busy timeout."""
    store, study, fault = flaky
    trial = study.ask()
    fault.on = True
    started = time.monotonic()
    assert store.record_heartbeat(trial_id_of(trial)) is None
    with while_training(store):
        trial.report(0.5, 1)
        with pytest.raises(StoreAway):
            study.get_trials()
    assert time.monotonic() - started < 0.5
    assert capsys.readouterr().err.count("unreachable") == 1
    fault.on = False
    store.record_heartbeat(trial_id_of(trial))  # the store is back: it says so, the trial reports again
    with while_training(store):
        trial.report(0.6, 2)
    assert study.get_trials()[0].intermediate_values == {1: 0.5, 2: 0.6}
    assert "reachable again" in capsys.readouterr().err


def test_a_wrong_address_is_refused_at_once_not_waited_for(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open the store"):
        open_storage(f"sqlite:///{tmp_path / 'file' / 'x.db'}", heartbeat=True, patience=30)
    if not postgres_available():
        url = sqlalchemy.engine.make_url(POSTGRES_URL).set(database=f"missing_{uuid.uuid4().hex[:8]}")
        with pytest.raises(StoreError, match="does not exist"):
            open_storage(url.render_as_string(hide_password=False), heartbeat=True, patience=30)
    assert time.monotonic() - started < 5


def test_errors_that_are_not_an_outage_are_raised_at_once(sqlite_url):
    store = open_storage(sqlite_url, heartbeat=True, patience=30)
    study = optuna.create_study(storage=store, study_name="s")

    def broken(*_args: object) -> None:
        raise sqlite3.OperationalError("no such table: trials")

    sqlalchemy.event.listen(store.engine, "before_cursor_execute", broken)
    started = time.monotonic()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.get_trials()
    assert time.monotonic() - started < 0.5


def test_whole_trials_go_through_outages(flaky):
    """Optuna reaches the database through private methods of RDBStorage too (``_set_trial_param``,
    ``_get_trials``, ``_get_stale_trial_ids``...): each of its calls waits for the store."""
    store, study, fault = flaky

    def objective(trial: optuna.Trial) -> float:
        fault.for_seconds(0.6)
        x = trial.suggest_float("x", 0, 1)
        fault.for_seconds(0.6)
        trial.set_user_attr("a", 1)
        fault.for_seconds(0.6)
        return x

    fault.for_seconds(0.6)
    study.optimize(objective, n_trials=2)
    assert [(t.state.name, t.user_attrs) for t in study.get_trials()] == [
        ("COMPLETE", {"a": 1, OWNER_ATTR: this_process()})] * 2


def test_a_tell_that_landed_before_its_connection_dropped_is_written_once(flaky, monkeypatch):
    store, study, _ = flaky
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    calls = []

    def lands_then_drops(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            real(self, *args, **kwargs)
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", lands_then_drops)
    study.tell(trial, 0.5)
    assert len(calls) == 2
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


class CuttableProxy:
    """A TCP proxy to the PostgreSQL server that a test can cut: every open connection is closed and
    new ones are refused until ``restore``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.open = target, True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if not self.open:
                client.close()
                continue
            server = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for end in self.sockets:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets.clear()

    def restore(self) -> None:
        self.open = True


@pytest.fixture
def proxied_postgres():
    """A PostgreSQL URL through a ``CuttableProxy``, and the proxy."""
    reason = postgres_available()
    if reason:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {reason}")
    url = sqlalchemy.engine.make_url(POSTGRES_URL)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    return url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy


def search_command(url: str, study: str, *extra: str) -> list[str]:
    tiny = [arg for value in TINY["resnet"] for arg in ("--set", value)]
    return [sys.executable, "-m", "tuner", "search", "--space", "resnet", "--dataset", "digits", "--epochs", "2",
            "--pruner", "none", "--keep", "0", "--quiet", "--storage", url, "--study", study, *tiny, *extra]


def trials_by_state(study: str) -> dict[str, int]:
    """The study's trials by state, read straight from the server (not through the proxy)."""
    trials = optuna.load_study(study_name=study, storage=POSTGRES_URL).get_trials(deepcopy=False)
    return dict(collections.Counter(trial.state.name for trial in trials))


def wait_for_complete(study: str, count: int, run: subprocess.Popen) -> None:
    """Until ``count`` trials of ``study`` are complete, read straight from the server."""
    watch_trials(POSTGRES_URL, study, lambda trials: sum(t.state.name == "COMPLETE" for t in trials) >= count,
                 process=run)


@pytest.mark.slow
def test_a_search_with_two_workers_outlives_a_store_cut_for_seconds(proxied_postgres, tmp_path):
    url, proxy = proxied_postgres
    study = f"outage-{uuid.uuid4().hex[:8]}"
    run = subprocess.Popen(search_command(url, study, "--trials", "4", "--workers", "2"), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_complete(study, 2, run)
        proxy.cut()
        time.sleep(8)
        proxy.restore()
        out, err = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert "retrying for up to 300 s" in err and "reachable again" in err
    assert trials_by_state(study) == {"COMPLETE": 4}  # each stored once, none RUNNING or FAIL
    optuna.delete_study(study_name=study, storage=POSTGRES_URL)


@pytest.mark.slow
def test_a_store_away_for_longer_than_the_timeout_stops_the_search_with_one_line(proxied_postgres, tmp_path):
    url, proxy = proxied_postgres
    study = f"outage-{uuid.uuid4().hex[:8]}"
    command = search_command(url, study, "--trials", "3", "--store-timeout", "3")
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_complete(study, 1, run)
        proxy.cut()
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
        proxy.restore()
    assert run.returncode == 3, err
    errors = [line for line in err.splitlines() if line.startswith("tuner: error")]
    assert len(errors) == 1 and "unreachable for 3 s" in errors[0], err
    assert "Traceback" not in err
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    states = trials_by_state(study)
    assert "RUNNING" not in states and states["COMPLETE"] == 3, states
    optuna.delete_study(study_name=study, storage=POSTGRES_URL)
