"""``tuner.search`` end to end on the embedded digits data, and the Optuna adapter it drives."""

from __future__ import annotations

import io
import json
import random
import re
import wsgiref.util
from collections.abc import Iterator

import keras
import numpy as np
import optuna
import pytest
from conftest import TINY
from conftest import fake_trainer

import tuner
from search_spaces import SpaceError
from search_spaces import get_space
from search_spaces import parse_assignments
from search_spaces import resolve_overrides
from storage import StudyMismatchError
from tuner.backends._optuna import OptunaHyperParameters
from tuner.backends._optuna import SearchAborted
from tuner.backends._optuna import to_distribution

TRIAL_ATTRS = {"epochs", "best_epoch", "train_seconds", "seconds_per_epoch", "param_count", "train_loss",
               "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"}


def test_adapter_turns_every_declaration_into_a_suggestion():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    overrides = resolve_overrides(get_space("densenet").hyperparameters(),
                                  parse_assignments(["blocks=depth", "depth=22", "learning_rate=1e-3..1e-2",
                                                     "optimizer=sgd,adam"]))
    for _ in range(5):
        trial = study.ask()
        values = get_space("densenet").declare(OptunaHyperParameters(trial, overrides))
        # AdamW's weight_decay is inactive for sgd and adam: not sampled, 0 for the builder.
        assert trial.params == {k: v for k, v in values.items() if k != "weight_decay"}
        assert values["weight_decay"] == 0.0
        assert values["depth"] == 22 and 1e-3 <= values["learning_rate"] <= 1e-2
        assert values["compression"] in (0.5, 0.75, 1.0) and isinstance(values["bottleneck"], bool)
        study.tell(trial, 0.0)
    dists = study.trials[0].distributions
    assert dists["learning_rate"].log and dists["dropout"].step == 0.05
    assert dists["depth"].choices == (22,)


def test_every_keras_tuner_kind_maps_to_an_optuna_distribution():
    from search_spaces import ParamSpec

    assert to_distribution(ParamSpec("Int", "a", {"min_value": 1, "max_value": 9, "step": 2})).step == 2
    log_int = to_distribution(ParamSpec("Int", "a", {"min_value": 1, "max_value": 64, "step": 2, "sampling": "log"}))
    assert log_int.log and log_int.step == 1  # Optuna forbids a step with log sampling
    assert to_distribution(ParamSpec("Float", "b", {"min_value": 0.0, "max_value": 1.0})).step is None
    assert to_distribution(ParamSpec("Choice", "c", {"values": ["x", "y"]})).choices == ("x", "y")
    assert to_distribution(ParamSpec("Boolean", "d")).choices == (False, True)
    assert to_distribution(ParamSpec("Fixed", "e", {"value": 3})).choices == (3,)


def _call(app, path: str) -> dict:
    """GET ``path`` from a WSGI app and decode its JSON."""
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


@pytest.mark.core
@pytest.mark.slow
def test_search_stores_every_trial_and_continues(sqlite_url):
    study = tuner.search("resnet", "digits", trials=2, epochs=2, study="s", storage=sqlite_url,
                         overrides=TINY["resnet"], seed=1, pruner="none")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    assert study.best_value > 0.5  # two epochs learn digits well above chance (0.1)
    n = study.user_attrs["splits"]["train"]  # a report's step counts training images: epoch e at e * n
    for trial in trials:
        assert TRIAL_ATTRS <= set(trial.user_attrs)
        assert set(trial.intermediate_values) == {n, 2 * n}
        assert trial.value == max(trial.intermediate_values.values())
        assert 0.0 <= trial.user_attrs["test_accuracy"] <= 1.0
        decay = "weight_decay" if trial.params["optimizer"] == "adamw" else "l2"  # the second: the alternative
        assert set(trial.params) == {"depth", "filters", "kernel_size", "stem_stride", "version", "dropout", decay,
                                     "learning_rate", "optimizer", "lr_schedule", "activation", "l1"}
    attrs = optuna.load_study(study_name="s", storage=sqlite_url).user_attrs
    assert attrs["space"] == "resnet" and attrs["dataset"] == "digits"
    assert attrs["input_shape"] == [8, 8, 1] and attrs["classes"] == 10
    assert attrs["keras_backend"] == keras.backend.backend() and "keras" in attrs["versions"]
    assert attrs["settings"]["max_epochs"] == 2 and attrs["settings"]["pruner"] == "none"
    assert attrs["overrides"]["depth"] == "8"

    # The same call again has nothing left to do (a larger budget continues: test_backends.py).
    assert len(tuner.search("resnet", "digits", trials=2, epochs=2, study="s", storage=sqlite_url,
                            overrides=TINY["resnet"]).trials) == 2

    with pytest.raises(StudyMismatchError, match="space="):
        tuner.search("densenet", "digits", trials=3, study="s", storage=sqlite_url,
                     overrides=TINY["densenet"])
    with pytest.raises(StudyMismatchError, match="maximizes its objective"):
        tuner.search("resnet", "digits", trials=3, study="s", storage=sqlite_url,
                     overrides=TINY["resnet"], objective="val_loss")

    # optuna-dashboard's own app serves the study: its trials, params and learning curves.
    from optuna_dashboard import wsgi

    app = wsgi(sqlite_url)
    listed = _call(app, "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in listed] == ["s"]
    detail = _call(app, f"/api/studies/{listed[0]['study_id']}")
    assert len(detail["trials"]) == 2
    assert len(detail["trials"][0]["intermediate_values"]) == 2
    assert {p["name"] for p in detail["trials"][0]["params"]} >= {"depth", "learning_rate"}


def test_several_batch_sizes_make_the_batch_size_a_hyperparameter(tiny_space, sqlite_url):
    study = tuner.search(tiny_space, "digits", trials=4, epochs=1, storage=sqlite_url, study="b", batch_size=[64, 16],
                         sampler="random", pruner="none", seed=0, keep=0)
    first, *others = study.trials
    assert first.params["batch_size"] == 16  # the automatic size on digits, one of the choices: the defaults'
    assert first.distributions["batch_size"] == optuna.distributions.CategoricalDistribution([16, 64])
    assert all(t.state.name == "COMPLETE" and t.params["batch_size"] == t.user_attrs["batch_size"]
               for t in study.trials)
    assert {t.params["batch_size"] for t in study.trials} == {16, 64}
    with pytest.raises(tuner.TunerError, match="--backend optuna only"):
        tuner.SearchRequest(batch_size=[16, 32], backend="keras-tuner").checked()


def test_batch_sizes_on_the_command_line():
    from tuner._request import batch_sizes

    assert batch_sizes("64") == 64 and batch_sizes("32,64,128") == [32, 64, 128]
    with pytest.raises(ValueError):
        batch_sizes("32,x")
    with pytest.raises(tuner.TunerError, match="--batch-size must be a positive number, got 0"):
        tuner.SearchRequest(batch_size=[0, 32]).checked()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["optuna", "keras-tuner"])
def test_one_search_across_families_and_its_best_model(backend, sqlite_url, tmp_path, capsys):
    """``--space auto``: trials of several families in one study, which best, export and report read."""
    from tuner.cli import main

    study = tuner.search("auto", "digits", trials=4, epochs=1, storage=sqlite_url, study="a", overrides=TINY["auto"],
                         pruner="none", seed=3, backend=backend, batch_size=64,
                         **({"algorithm": "random"} if backend == "keras-tuner" else {"sampler": "random"}))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({t.params["family"] for t in complete}) >= 2
    assert all(name == "family" or name.startswith(t.params["family"] + ".") or "." not in name
               for t in complete for name in t.params)
    store = ["--study", "a", "--storage", sqlite_url]
    assert main(["best", *store]) == 0 and "family" in capsys.readouterr().out
    assert main(["export", *store, "--output", str(tmp_path / "m.keras")]) == 0
    assert main(["report", *store, "--output", str(tmp_path / "r.html")]) == 0


@pytest.mark.core
@pytest.mark.slow
def test_densenet_search_minimising_val_loss(sqlite_url):
    study = tuner.search("densenet", "digits", trials=1, epochs=1, storage=sqlite_url,
                         overrides=TINY["densenet"], objective="val_loss", sampler="random")
    assert study.study_name == "densenet-digits" and study.direction.name == "MINIMIZE"
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and trial.value == trial.user_attrs["val_loss"]
    assert trial.params["depth"] == 10 and trial.params["growth_rate"] == 8


@pytest.mark.parametrize("error", [MemoryError("host"), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")])
def test_out_of_memory_fails_that_trial_and_the_study_goes_on(sqlite_url, monkeypatch, error, tiny_space):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer(fail={1: error}))
    study = tuner.search(tiny_space, "digits", trials=2, study="oom", storage=sqlite_url, keep=0)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    reason = study.trials[0].user_attrs["error"]
    assert reason.startswith("out of memory (try a smaller --batch-size") and type(error).__name__ in reason


def test_same_seed_same_suggestions(sqlite_url, monkeypatch, tiny_space):

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("x")))
    for name in ("a", "b"):
        with pytest.raises(SearchAborted):
            tuner.search(tiny_space, "digits", trials=3, study=name, storage=sqlite_url, seed=7,
                         max_failures=3)
    a, b = (optuna.load_study(study_name=n, storage=sqlite_url).trials for n in ("a", "b"))
    assert [t.params for t in a] == [t.params for t in b]


@pytest.mark.parametrize("kwargs,error,message", [
    ({"space": "alexnet"}, SpaceError, "choose one of: auto, densenet, inception, resnet, resnet_imagenet, vgg"),
    ({"overrides": ["depth=21"]}, SpaceError, "depth must be one of"),
    ({"sampler": "grid"}, tuner.TunerError, "choose one of: tpe, random, gp, cmaes, qmc"),
    ({"objective": "accuracy"}, tuner.TunerError, "val_accuracy, val_loss"),
    ({"trials": 0}, tuner.TunerError, "--trials must be a positive number"),
    ({"dataset": "nope"}, tuner.DataError, "unknown dataset"),
])
def test_bad_requests_fail_before_any_trial(sqlite_url, kwargs, error, message):
    with pytest.raises(error, match=message):
        tuner.search(**{"space": "resnet", "storage": sqlite_url, **kwargs})
    assert optuna.get_all_study_names(sqlite_url) == []


@pytest.mark.auto_batch
def test_pruned_trial_keeps_its_learning_curve(sqlite_url, monkeypatch, tiny_space):
    import tuner.driver._search

    # A pruner that rejects every trial after its first epoch.
    monkeypatch.setattr(tuner.driver._search, "make_pruner",
                        lambda name, epochs, resource: optuna.pruners.ThresholdPruner(lower=2.0))
    study = tuner.search(tiny_space, "digits", trials=1, epochs=3, storage=sqlite_url)
    (trial,) = study.trials
    assert trial.state.name == "PRUNED"
    assert list(trial.intermediate_values) == [study.user_attrs["splits"]["train"]]  # one epoch's images
    assert trial.user_attrs["epochs"] == 1
    assert trial.user_attrs["augment"] == "shift" and trial.user_attrs["batch_size"] == 16  # automatic, for digits


def test_the_spaces_alternatives_follow_its_defaults_unpruned(sqlite_url, monkeypatch):
    import tuner.driver._search

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    monkeypatch.setattr(tuner.driver._search, "make_pruner",  # would prune every trial after an epoch
                        lambda name, epochs, resource: optuna.pruners.ThresholdPruner(lower=2.0))
    study = tuner.search("resnet", "digits", trials=3, epochs=2, storage=sqlite_url, overrides=TINY["resnet"],
                         keep=0)
    roles = [(t.user_attrs.get("role"), t.params.get("version"), t.params["optimizer"], t.state.name)
             for t in study.trials]
    # The defaults, pruned after an epoch; the alternative, never asked; then the sampler's, asked.
    assert roles[:2] == [(None, "v1", "adam", "PRUNED"), ("alternative", "v2", "adamw", "COMPLETE")]
    assert roles[2][0] is None and roles[2][3] == "PRUNED"
    assert study.trials[1].params["learning_rate"] == 1e-2 and study.trials[1].params["dropout"] == 0.1
    # Where --set rules an alternative out, or the trials leave no room for it, none is tried.
    for name, overrides, trials in (("v1", [*TINY["resnet"], "version=v1"], 2), ("one", TINY["resnet"], 1)):
        narrowed = tuner.search("resnet", "digits", trials=trials, epochs=1, storage=sqlite_url, study=name,
                                overrides=overrides, keep=0)
        assert [t.user_attrs.get("role") for t in narrowed.trials] == [None] * trials


@pytest.mark.slow
@pytest.mark.core
def test_a_configuration_is_judged_before_its_first_epoch_ends(sqlite_url, tiny_space):
    # At batch size 8 an epoch of digits is 162 steps: the pruner's first rung is a third of it.
    study = tuner.search(tiny_space, "digits", trials=6, epochs=2, batch_size=8, pruner="sha", seed=0,
                         keep=0, storage=sqlite_url)
    n = study.user_attrs["splits"]["train"]
    early = [t for t in study.trials if t.state.name == "PRUNED" and max(t.intermediate_values) < n]
    assert early, [(t.state.name, t.intermediate_values) for t in study.trials]
    for trial in early:  # judged once, on the validation split, after a third of an epoch, and stopped
        assert list(trial.intermediate_values) == [n // 3] and "epochs" not in trial.user_attrs
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete and all(list(t.intermediate_values) == [n // 3, n, 2 * n] for t in complete)


def test_interrupt_leaves_no_trial_running(sqlite_url, monkeypatch, tiny_space):

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuner.search(tiny_space, "digits", trials=3, study="i", storage=sqlite_url)
    assert [t.state.name for t in optuna.load_study(study_name="i", storage=sqlite_url).trials] == ["FAIL"]


def test_continuing_a_study_does_not_repeat_its_configurations(sqlite_url, monkeypatch, tiny_space):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    settings = dict(study="c", storage=sqlite_url, keep=0, start_from_defaults=False)
    tuner.search(tiny_space, "digits", trials=2, **settings)
    study = tuner.search(tiny_space, "digits", trials=4, **settings)  # the same command, continued
    configurations = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(study.trials) == 4 and len(configurations) == 4


@pytest.fixture
def stop_signals(monkeypatch) -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM handled as the CLI handles them (``stop_on_signals``), restored afterwards;
    yields the train steps that ``train_tiny`` runs."""
    import signal
    import threading

    import tuner.training._process as process

    assert threading.current_thread() is threading.main_thread()  # else SIGTERM would end pytest
    for name in ("received", "repeats_ignored", "holding", "pending"):
        monkeypatch.setattr(process._Signals, name, getattr(process._Signals, name))
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    process.stop_on_signals()
    yield []
    for number, handler in previous.items():
        signal.signal(number, handler)


def train_tiny(steps: list[int], *layers: keras.layers.Layer, callbacks=()) -> None:
    """Two epochs of a one-layer model on digits, ``layers`` first, through the trial runner."""
    from tuner.training._training import train_and_evaluate

    data = tuner.load_dataset("digits")
    model = keras.Sequential([keras.Input(data.x_train.shape[1:]), *layers, keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    train_and_evaluate(model, data, epochs=2, batch_size=32, objective="val_accuracy", callbacks=callbacks,
                       on_step=lambda step, total, logs: steps.append(step))


def test_a_signal_while_the_train_step_is_traced_is_raised_after_that_step(stop_signals):
    """SIGTERM that lands while the framework traces (or runs) the first train step is held until
    the step ends. Raised inside TensorFlow's tracing it once came back as a ``RuntimeError``
    (pybind11's "MISMATCH of original and normalized active exception types") that failed only that
    trial, and the search went on."""
    import os
    import signal

    armed, signalled = [], []

    class SignalsOnce(keras.layers.Layer):
        def call(self, x):
            if armed and not signalled:
                signalled.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
            return x

    class Arm(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            armed.append(1)  # the next call of the layer is in the first train step

    with pytest.raises(KeyboardInterrupt):
        train_tiny(stop_signals, SignalsOnce(), callbacks=[Arm()])
    assert signalled and stop_signals == [1]  # the step the signal landed in ran to its end, and no other


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_an_interrupt_lost_in_a_finaliser_stops_the_next_training(stop_signals):
    """A signal that lands in a finaliser (here a weakref callback; on JAX, SQLAlchemy's during a
    garbage collection) has its ``KeyboardInterrupt`` printed as "Exception ignored" and dropped:
    the search used to go on to its end and exit 0. The next training raises it before a step."""
    import os
    import signal
    import weakref

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGTERM))
    del thing  # the callback runs here, and the handler's KeyboardInterrupt is dropped with it
    assert ref() is None
    with pytest.raises(KeyboardInterrupt):
        train_tiny(stop_signals)
    assert stop_signals == []


@pytest.mark.slow
def test_sigterm_records_the_trial_in_flight_as_failed(sqlite_url):
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "tuner", "search", "--trials", "3", "--epochs", "50", "--study", "t",
               "--storage", sqlite_url, "--recycle-after", "0", "--pruner", "none", "--quiet",
               *(f"--set={item}" for item in TINY["resnet"])]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TUNER_STORAGE": ""})
    deadline = time.monotonic() + 120
    running: list = []
    while not running and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="t", storage=sqlite_url)
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            pass
    assert running, "no trial started"
    time.sleep(1.5)  # inside the trial (building or tracing its model), before its first epoch ends
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    assert code == 130, process.stderr.read()[-8000:]
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]


@pytest.mark.slow
def test_two_workers_share_one_trial_budget(sqlite_url):
    import subprocess
    import sys
    from pathlib import Path

    worker = [sys.executable, str(Path(__file__).with_name("fake_worker.py")), sqlite_url, "shared", "6"]
    procs = [subprocess.Popen(worker, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    states = [t.state.name for t in optuna.load_study(study_name="shared", storage=sqlite_url).trials]
    assert states == ["COMPLETE"] * 6


@pytest.mark.slow
@pytest.mark.core
def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(sqlite_url, monkeypatch):
    import keras

    import search_spaces._base as base

    # For the first trial, a learning rate no space offers, so the loss really becomes NaN in training.
    built = []
    original = base.make_optimizer

    def first_diverges(name, lr, *args):
        built.append(name)
        return keras.optimizers.SGD(learning_rate=1e12) if len(built) == 1 else original(name, lr, *args)

    monkeypatch.setattr(base, "make_optimizer", first_diverges)
    study = tuner.search("resnet", "digits", trials=1, epochs=2, storage=sqlite_url, overrides=TINY["resnet"],
                         pruner="none", keep=0)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert re.search("loss became (nan|inf)", study.trials[0].user_attrs["error"])


def test_a_trial_whose_worker_died_is_failed_and_retried(sqlite_url, monkeypatch):
    import datetime

    from storage import open_storage
    from tuner._compat import trial_id_of

    # A RUNNING trial whose heartbeat stopped long ago, as kill -9 leaves it.
    store = open_storage(sqlite_url, heartbeat=True)
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("no training in this test")))
    with pytest.raises(SearchAborted):
        tuner.search("resnet", "digits", trials=1, study="k", storage=sqlite_url, max_failures=1,
                     overrides=TINY["resnet"])
    study = optuna.load_study(study_name="k", storage=store)
    dead = study.ask({"depth": optuna.distributions.CategoricalDistribution([8])})
    long_ago = datetime.datetime.now() - datetime.timedelta(hours=1)
    store.record_heartbeat(trial_id_of(dead))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE trial_heartbeats SET heartbeat = ?", (long_ago,))
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("still no training")))
    with pytest.raises(SearchAborted):
        tuner.search("resnet", "digits", trials=3, study="k", storage=sqlite_url, max_failures=1,
                     overrides=TINY["resnet"])
    trials = optuna.load_study(study_name="k", storage=sqlite_url).trials
    assert trials[dead.number].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].params["depth"] == 8


def test_workers_must_be_one_or_more(sqlite_url):
    with pytest.raises(tuner.TunerError, match="--workers must be 1 or more"):
        tuner.search("resnet", "digits", storage=sqlite_url, workers=0)


@pytest.mark.auto_batch
def test_the_default_batch_size_leaves_enough_steps_per_epoch():
    from tuner.driver._search import auto_batch_size

    assert auto_batch_size(1149) == 16  # digits: 72 steps an epoch, not 36 at 32
    assert auto_batch_size(45_000, "gpu") == 128  # CIFAR-10: large batches keep an accelerator busy
    assert auto_batch_size(45_000) == 64  # a CPU gets twice the updates for the same time
    assert auto_batch_size(100) == 16  # never below 16
    for device, largest in (("cpu", 64), ("gpu", 128)):
        for n in (1149, 3000, 5000, 45_000):
            size = auto_batch_size(n, device)
            assert n / size >= 64 and (size == largest or n / (2 * size) < 64)


def test_a_trial_traces_its_train_step_once():
    """Keras on TensorFlow creates the optimizer's and metrics' variables while tracing the first train
    step, which makes TensorFlow trace it twice; ``build_training_state`` creates them first."""
    import numpy as np

    from tuner.training._training import build_training_state

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's tracing")
    x, y = np.random.rand(40, 8).astype("float32"), np.arange(40) % 3

    def traces(prebuild: bool) -> int:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        traced = []
        train_step = model.train_step
        model.train_step = lambda data: traced.append(1) or train_step(data)
        if prebuild:
            build_training_state(model, x[:2], y[:2])
            counts = [float(v) for m in model.metrics for v in m.variables]
            assert counts and not any(counts)  # built, then reset: fit starts from zero
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        return len(traced)

    assert traces(prebuild=False) == 2  # if Keras stops doing this, build_training_state can go
    assert traces(prebuild=True) == 1


@pytest.mark.slow
def test_a_new_trial_frees_the_graphs_tensorflow_registers_for_the_last_one():
    """TensorFlow registers a gradient function per traced train step and never drops it; it held
    every past trial's graph (~35 MB a trial). ``start_trial`` forgets them, except those a library
    caller registered before the search."""
    import keras

    from tuner._compat import tensorflow_gradient_registry
    from tuner.training._training import start_trial

    if keras.backend.backend() != "tensorflow":
        pytest.skip("a TensorFlow registry")

    def registered() -> int:
        return sum(name.startswith("CustomGradient-") for name in tensorflow_gradient_registry() or {})

    import keras_tuner
    import numpy as np

    from tuner.training._training import keep_callers_gradients

    def fit_a_model() -> None:
        hp = keras_tuner.HyperParameters()
        hp.Fixed("depth", 8)
        model = get_space("resnet")((8, 8, 1), 3).build(hp)
        model.fit(np.zeros((8, 8, 8, 1), "uint8"), np.arange(8) % 3, epochs=1, verbose=0)

    fit_a_model()  # a library caller's own model, before the search
    callers = registered()
    assert callers > 0  # if TensorFlow stops registering them, this test has served its time
    keep_callers_gradients()  # the search begins
    start_trial(0, "float32")
    fit_a_model()
    assert registered() > callers
    start_trial(1, "float32")
    assert registered() == callers  # the trial's are gone, the caller's stay


def test_a_study_from_an_older_space_is_refused_before_any_trial(sqlite_url):
    """A study whose trials drew ``optimizer`` from {adam, sgd} (before AdamW joined the space)."""
    from storage import open_storage
    from storage import open_study
    from tuner.driver._search import study_attrs

    data = tuner.load_dataset("digits")
    attrs = study_attrs("resnet", "optuna", "val_accuracy", {}, data.describe())
    study = open_study(open_storage(sqlite_url), "old", direction="maximize", attrs=attrs)
    study.add_trial(optuna.trial.create_trial(
        params={"optimizer": "adam"}, value=0.9,
        distributions={"optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"])}))
    with pytest.raises(tuner.TunerError, match=r"drew optimizer from \{adam, sgd\}.*\{adam, adamw, sgd, rmsprop\}"):
        tuner.search("resnet", "digits", trials=2, epochs=1, storage=sqlite_url, study="old")
    assert len(optuna.load_study(study_name="old", storage=sqlite_url).trials) == 1


def test_a_declaration_with_its_own_condition_is_honoured_as_keras_tuner_honours_it():
    """``parent_name``/``parent_values`` on a single declaration, not only ``conditional_scope``; an
    unknown keyword is an error, not silently ignored."""
    study = optuna.create_study()
    trial = study.ask()
    hp = OptunaHyperParameters(trial)
    hp.Fixed("optimizer", "sgd")
    assert hp.Float("momentum", 0.0, 0.99, parent_name="optimizer", parent_values=["sgd"]) is not None
    assert hp.Float("beta_2", 0.9, 0.999, parent_name="optimizer", parent_values="adam") is None
    assert "momentum" in trial.params and "beta_2" not in trial.params
    with pytest.raises(TypeError):
        hp.Int("depth", 1, 3, parent="optimizer")


@pytest.mark.slow
def test_worker_processes_share_the_study_and_leave_the_settings_the_user_gave(sqlite_url):
    """Four workers share one study in recycled rounds (fresh processes of one trial each), each with
    a derived sampler seed, recorded on their trials; the study's settings stay those the user gave
    (``tuner export --retrain`` reads them)."""
    study = tuner.search("resnet", "digits", trials=4, epochs=1, seed=5, workers=4, recycle_after=1,
                         storage=sqlite_url, overrides=TINY["resnet"], keep=0, pruner="none", batch_size=32)
    states = [t.state.name for t in study.get_trials()]
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and "RUNNING" not in states
    assert len({tuple(sorted(t.params.items())) for t in complete}) > 1
    settings = study.user_attrs["settings"]
    assert {k: settings[k] for k in ("trials", "timeout", "seed", "sampler", "pruner", "backend", "max_epochs",
                                     "batch_size")} == {
        "trials": 4, "timeout": None, "seed": 5, "sampler": "tpe", "pruner": "none", "backend": "optuna",
        "max_epochs": 1, "batch_size": 32}
    assert len({t.user_attrs["seed"] for t in complete}) == 4  # each weight seed its own


@pytest.mark.core
def test_the_library_leaves_the_callers_policy_random_states_and_handlers_as_it_found_them(tiny_space, sqlite_url,
                                                                                           tmp_path):
    import signal

    def state():
        return (keras.config.dtype_policy().name, random.getstate(), str(np.random.get_state()),
                signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

    keras.config.set_dtype_policy("mixed_bfloat16")
    random.seed(7)
    np.random.seed(7)
    before = state()
    try:
        tuner.search(tiny_space, "digits", trials=1, epochs=1, storage=sqlite_url, keep=1, precision="float32",
                     study="guest")
        assert state() == before
        tuner.export("guest", str(tmp_path / "retrained.keras"), storage=sqlite_url, retrain=True, epochs=1)
        assert state() == before
        assert tuner.best_trial("guest", sqlite_url)["number"] == 0
        assert state() == before
    finally:
        keras.config.set_dtype_policy("float32")
