"""The trial store: Optuna's schema on SQLite and PostgreSQL, bad files refused, studies never merged."""

from __future__ import annotations

import hashlib

import optuna
import pytest

from storage import StoreError
from storage import StudyMismatchError
from storage import open_storage
from storage import open_study
from storage import storage_url

ATTRS = {"space": "resnet", "dataset": "digits", "objective": "val_accuracy", "backend": "optuna",
         "overrides": {}}


def test_url_comes_from_argument_then_environment_then_default(monkeypatch):
    assert storage_url() == "sqlite:///tuner.db"
    monkeypatch.setenv("TUNER_STORAGE", "sqlite:///env.db")
    assert storage_url() == "sqlite:///env.db"
    assert storage_url("sqlite:///arg.db") == "sqlite:///arg.db"


def test_new_study_records_its_identity_and_continues(storage_url, unique_name):
    store = open_storage(storage_url)
    study = open_study(store, unique_name, direction="maximize", attrs=ATTRS)
    study.add_trial(optuna.trial.create_trial(value=0.5))
    again = open_study(open_storage(storage_url), unique_name, direction="maximize", attrs=ATTRS)
    assert len(again.trials) == 1
    # A finished study opens with plain Optuna, no tuner code involved.
    plain = optuna.load_study(study_name=unique_name, storage=storage_url)
    assert plain.user_attrs["space"] == "resnet" and plain.best_value == 0.5


@pytest.mark.parametrize("change", [{"space": "densenet"}, {"dataset": "mnist"},
                                    {"overrides": {"depth": "20"}}, {"backend": "keras-tuner"}])
def test_reusing_a_name_for_another_search_is_refused(storage_url, unique_name, change):
    store = open_storage(storage_url)
    open_study(store, unique_name, direction="maximize", attrs=ATTRS)
    key = next(iter(change))
    with pytest.raises(StudyMismatchError, match=f"created with {key}="):
        open_study(store, unique_name, direction="maximize", attrs={**ATTRS, **change})


def test_reusing_a_name_with_the_other_direction_is_refused(storage_url, unique_name):
    store = open_storage(storage_url)
    open_study(store, unique_name, direction="maximize", attrs=ATTRS)
    with pytest.raises(StudyMismatchError, match="maximizes its objective"):
        open_study(store, unique_name, direction="minimize", attrs=ATTRS)


def test_a_study_tuner_did_not_create_is_refused(storage_url, unique_name):
    # With a trial of its own, so it is refused at once; an empty one is waited for: its creator may
    # be a tuner process that has not written its identity yet.
    optuna.create_study(storage=storage_url, study_name=unique_name).optimize(lambda t: 0.0, n_trials=1)
    with pytest.raises(StudyMismatchError, match="not created by tuner"):
        open_study(open_storage(storage_url), unique_name, direction="maximize", attrs=ATTRS)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_that_is_not_a_database_is_left_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("my notes, not a database\n" * 100)
    before = _sha(path)
    with pytest.raises(StoreError, match="is not a SQLite database"):
        open_storage(f"sqlite:///{path}")
    assert _sha(path) == before


def test_a_corrupt_sqlite_file_is_left_untouched(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    before = _sha(path)
    with pytest.raises(StoreError, match="cannot open the store"):
        open_storage(f"sqlite:///{path}")
    assert _sha(path) == before


def test_missing_store_and_folder(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        open_storage(f"sqlite:///{tmp_path / 'absent.db'}", must_exist=True)
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(StoreError, match="is a folder"):
        open_storage(f"sqlite:///{tmp_path}")
    with pytest.raises(StoreError, match="not a database URL"):
        open_storage("nonsense")


def test_sqlite_store_uses_write_ahead_logging(sqlite_url):
    store = open_storage(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_schema_from_an_older_optuna_is_refused_untouched(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    open_storage(f"sqlite:///{path}").engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = 'v2.6.0.a'")  # as an Optuna 2.6 store says
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file itself, for the hash
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="optuna storage upgrade"):
        open_storage(f"sqlite:///{path}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def _open_and_run_trials(url: str, name: str, worker: int, start: float, queue) -> None:
    """One independent `tuner search`, reduced to its store calls: open the study, queue a
    configuration of its own, then take two trials and finish them."""
    import time

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = open_storage(url)
    while time.time() < start:  # every process opens the new study at the same instant
        time.sleep(0.001)
    try:
        study = open_study(store, name, direction="maximize", attrs=ATTRS, first_trials=[{"x": 1.0}],
                           sampler=optuna.samplers.RandomSampler())
        study.enqueue_trial({"x": worker / 10})
        for _ in range(2):
            trial = study.ask()
            study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
        queue.put(("ok",))
    except Exception as err:  # noqa: BLE001 - reported to the test
        queue.put(("error", type(err).__name__, str(err)))


def test_commands_that_create_one_study_at_once_run_each_queued_trial_once(storage_url, unique_name):
    """Optuna cannot lock a row on SQLite: without BEGIN IMMEDIATE two processes took the same
    enqueued trial ("Cannot tell a COMPLETE trial"), and a joiner could find the study before its
    creator had written what it is for ("not created by tuner")."""
    import multiprocessing
    import time

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time() + 4  # time for the spawned interpreters to import optuna
    processes = [context.Process(target=_open_and_run_trials,
                                 args=(storage_url, unique_name, worker, start, queue))
                 for worker in range(4)]
    for p in processes:
        p.start()
    results = [queue.get(timeout=60) for _ in processes]
    for p in processes:
        p.join()
    assert results == [("ok",)] * 4, results
    study = optuna.load_study(study_name=unique_name, storage=storage_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and len(study.trials) >= 8
    assert study.trials[0].params == {"x": 1.0}  # the creator's first trial, run once
    queued = [1.0, 0.0, 0.1, 0.2, 0.3]
    assert all([t.params["x"] for t in done].count(x) <= 1 for x in queued)
    assert study.user_attrs["space"] == "resnet"


def test_a_running_trial_whose_process_is_gone_from_this_host_fails_and_is_retried_once(sqlite_url):
    """Only trials owned by a dead process on this host are failed; a live owner, another host's
    trial and a trial with no owner wait for the heartbeat. Each failed trial is retried once."""
    import socket
    import subprocess
    import sys

    from storage import fail_orphaned_trials
    from storage._owners import OWNER_ATTR
    from storage._owners import this_process

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    owners = {
        "dead": {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "1"},
        "alive": this_process(),
        "elsewhere": {"host": "another-machine", "pid": int(dead.stdout), "started": "1"},
        "reused": {**this_process(), "started": "not-this-process-start"},  # a recycled pid
    }
    study = optuna.create_study(storage=sqlite_url, study_name="owners")
    for name, owner in [*owners.items(), ("unowned", None)]:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("name", name)
        if owner is not None:
            trial.set_user_attr(OWNER_ATTR, owner)
    failed = fail_orphaned_trials(study)
    by_name = {t.user_attrs["name"]: t for t in study.get_trials() if t.state != optuna.trial.TrialState.WAITING}
    assert sorted(failed) == sorted([by_name["dead"].number, by_name["reused"].number])
    assert {n for n, t in by_name.items() if t.state == optuna.trial.TrialState.RUNNING} == {
        "alive", "elsewhere", "unowned"}
    retries = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == sorted(failed)
    assert all(OWNER_ATTR not in t.user_attrs for t in retries)  # nobody's until a process takes it
    assert fail_orphaned_trials(study) == []  # once


def test_a_trial_whose_process_died_before_recording_its_owner_is_failed_and_retried(sqlite_url):
    """A process that takes a queued trial, or creates one, and dies before its first write to it (the
    store went away between ``Study.ask`` and the owner's record) leaves a RUNNING trial that never
    beat: the claim written as it took the queued one, and the owner written with the created one,
    let the next search fail and retry both."""
    import subprocess
    import sys

    from storage import fail_orphaned_trials

    study = optuna.create_study(storage=sqlite_url, study_name="unrecorded")
    study.enqueue_trial({"x": 0.5})
    taker = ("import os, optuna\nfrom storage import open_storage\n"
             f"store = open_storage({sqlite_url!r}, heartbeat=True, patience=5)\n"
             "study = optuna.load_study(study_name='unrecorded', storage=store)\n"
             "study.ask(); study.ask()\n"  # the queued trial, then a new one
             "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", taker], check=True, timeout=120)
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING"]
    assert sorted(fail_orphaned_trials(study)) == [0, 1]
    retries = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in retries) == [0, 1]
    assert not any(key.startswith("claim:") for t in retries for key in t.system_attrs)  # nobody's yet


def test_a_claim_lost_in_the_race_is_withdrawn_and_a_retry_is_nobodys(sqlite_url):
    """A process whose take of a queued trial loses to another withdraws its claim, so the winner's
    death is still seen; a failed trial's retry (``RetryOnce``, the heartbeat's too) carries neither
    its owner nor its claims."""
    import subprocess
    import sys

    from storage import fail_orphaned_trials
    from storage import open_storage
    from storage._owners import OWNER_ATTR
    from storage._owners import RetryOnce
    from storage._owners import this_process
    from tuner._compat import trial_id_of

    study = optuna.create_study(storage=sqlite_url, study_name="raced")
    study.enqueue_trial({"x": 0.5})
    taker = ("import os, optuna\nfrom storage import open_storage\n"
             f"store = open_storage({sqlite_url!r}, heartbeat=True, patience=5)\n"
             "optuna.load_study(study_name='raced', storage=store).ask()\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", taker], check=True, timeout=120)
    (taken,) = study.get_trials()
    loser = open_storage(sqlite_url, heartbeat=True, patience=5)
    assert loser.set_trial_state_values(trial_id_of(taken), optuna.trial.TrialState.RUNNING) is False
    assert fail_orphaned_trials(study) == [0]  # the live loser's withdrawn claim does not hide it

    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={OWNER_ATTR: this_process()},
                                       system_attrs={"claim:h:1": this_process()})
    RetryOnce()(study, failed)
    retry = study.get_trials()[-1]
    assert retry.state.name == "WAITING" and OWNER_ATTR not in retry.user_attrs
    assert not any(key.startswith("claim:") for key in retry.system_attrs)


def test_a_process_that_ended_is_gone_before_its_parent_reaps_it():
    """A killed worker is a zombie until the pool reads its exit status: it runs no trial any more."""
    import subprocess
    import sys
    import time

    from storage._owners import process_started

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert process_started(child.pid) is not None or child.poll() is not None  # alive (or already reaped)
    deadline = time.monotonic() + 30
    while process_started(child.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # it ends; not waited for, it stays a zombie
    assert process_started(child.pid) is None
    assert child.wait() == 0  # it was not reaped by the check: its status was still there to read

