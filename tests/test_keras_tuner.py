"""The Keras Tuner backend: its hyperparameters, states and trials land in the Optuna study, once."""

from __future__ import annotations

import keras_tuner
import optuna
import pytest
from conftest import TINY
from conftest import fake_trainer
from conftest import undeclared_attributes
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

import tuner
import tuner.backends._keras_tuner as kt_backend
from storage import StudyMismatchError
from tuner.attributes import TRIAL_ID_ATTR
from tuner.backends._keras_tuner import optuna_params
from tuner.backends._keras_tuner import optuna_state
from tuner.errors import TunerError

TRIAL_ATTRS = {"epochs", "best_epoch", "train_seconds", "param_count", "val_accuracy", "test_accuracy",
               "batch_size", "augment", "precision", "max_epochs", TRIAL_ID_ATTR, "algorithm"}


def test_every_keras_tuner_kind_becomes_an_optuna_param_with_its_distribution():
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 8, 64, step=8, default=16)
    hp.Int("blocks", 1, 64, sampling="log")
    hp.Float("dropout", 0.0, 0.5, step=0.05, default=0.15)
    hp.Float("lr", 1e-4, 1e-1, sampling="log", default=1e-3)
    hp.Choice("optimizer", ["adam", "sgd"], default="sgd")
    hp.Boolean("bottleneck", default=True)
    hp.Fixed("kernel_size", 3)
    hp.values["tuner/epochs"] = 4  # Hyperband's bookkeeping: an attribute, not a parameter
    params, distributions = optuna_params(hp)
    assert params == {"units": 16, "blocks": 1, "dropout": 0.15, "lr": 1e-3, "optimizer": "sgd",
                      "bottleneck": True, "kernel_size": 3}
    assert distributions["units"] == IntDistribution(8, 64, step=8)
    assert distributions["blocks"] == IntDistribution(1, 64, log=True)
    assert distributions["dropout"] == FloatDistribution(0.0, 0.5, step=0.05)
    assert distributions["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert distributions["optimizer"] == CategoricalDistribution(["adam", "sgd"])
    assert distributions["bottleneck"] == CategoricalDistribution([False, True])
    assert distributions["kernel_size"] == CategoricalDistribution([3])
    # Optuna accepts them as a trial: every value lies in its distribution.
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5))
    assert study.trials[0].params == params


def test_inactive_conditional_hyperparameters_are_left_out():
    hp = keras_tuner.HyperParameters()
    hp.Choice("optimizer", ["adam", "sgd"], default="adam")
    with hp.conditional_scope("optimizer", ["sgd"]):
        hp.Float("momentum", 0.0, 0.99)
    params, _ = optuna_params(hp)
    assert params == {"optimizer": "adam"}


@pytest.mark.parametrize("status, epochs, expected", [
    ("COMPLETED", 4, TrialState.COMPLETE),
    ("COMPLETED", 2, TrialState.PRUNED),  # a Hyperband round short of the full budget
    ("FAILED", 4, TrialState.FAIL),
    ("INVALID", 1, TrialState.FAIL),
    ("STOPPED", 4, TrialState.FAIL),
])
def test_keras_tuner_states(status, epochs, expected):
    assert optuna_state(status, epochs, 4) == expected


def kt_search(url, space="resnet", **kwargs):
    """A small Keras Tuner search: the smallest ResNet by default; ``space="tiny"`` (with the
    ``tiny_space`` fixture) for bookkeeping tests, whose models build in a fraction of the time."""
    settings = dict(trials=3, epochs=2, study="kt", storage=url, backend="keras-tuner", algorithm="random",
                    overrides=TINY["resnet"] if space == "resnet" else [], keep=0)
    return tuner.search(space, "digits", **{**settings, **kwargs})


def test_random_search_mirrors_every_trial(sqlite_url, monkeypatch):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    study = kt_search(sqlite_url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert sorted(int(t.user_attrs[TRIAL_ID_ATTR]) for t in trials) == [0, 1, 2]
    n = study.user_attrs["splits"]["train"]  # a report's step counts training images
    for trial in trials:
        assert set(trial.intermediate_values) == {n, 2 * n}
        assert trial.value == trial.intermediate_values[2 * n]
        assert set(trial.params) >= {"depth", "learning_rate", "optimizer"} and trial.params["depth"] == 8
    assert study.user_attrs["backend"] == "keras-tuner" and study.user_attrs["algorithm"] == "random"
    assert undeclared_attributes(study) == []
    # Running the same command again: the budget is spent, nothing is added.
    assert len(kt_search(sqlite_url).trials) == 3
    assert len(kt_search(sqlite_url, trials=4).trials) == 4


def test_hyperband_rounds_are_pruned_and_continued(sqlite_url, monkeypatch, tiny_space):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    study = kt_search(sqlite_url, tiny_space, algorithm="hyperband", trials=8, epochs=3)
    trials = study.get_trials()
    assert len(trials) == 8
    states = {t.state for t in trials}
    assert states == {TrialState.PRUNED, TrialState.COMPLETE}
    for trial in trials:
        epochs = trial.user_attrs["tuner_epochs"]
        assert trial.state == (TrialState.COMPLETE if epochs == 3 else TrialState.PRUNED)
        assert max(trial.intermediate_values) == epochs * study.user_attrs["splits"]["train"]
    continued = [t for t in trials if "tuner_trial_id" in t.user_attrs]
    assert continued, "Hyperband promoted no trial"
    by_id = {t.user_attrs[TRIAL_ID_ATTR]: t for t in trials}
    for child in continued:
        parent = by_id[child.user_attrs["tuner_trial_id"]]
        assert child.params == parent.params
        # The curve of a continued round starts with its parent's epochs.
        for step in parent.intermediate_values:
            assert child.intermediate_values[step] == parent.intermediate_values[step]
    # optuna-dashboard draws the learning curves of the pruned rounds from the store.
    from optuna_dashboard import wsgi
    from test_search import _call

    app = wsgi(sqlite_url)
    study_id = _call(app, "/api/studies")["study_summaries"][0]["study_id"]
    served = _call(app, f"/api/studies/{study_id}")["trials"]
    pruned = [t for t in served if t["state"].lower() == "pruned"]
    assert len(pruned) == sum(t.state == TrialState.PRUNED for t in trials)
    assert all(len(t["intermediate_values"]) == t_epochs for t, t_epochs in
               zip(pruned, (t.user_attrs["tuner_epochs"] for t in trials if t.state == TrialState.PRUNED), strict=True))


def test_a_failing_trial_is_recorded_and_the_search_goes_on(sqlite_url, monkeypatch, tiny_space):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate",
                        fake_trainer(fail={2: RuntimeError("out of memory (simulated)")}))
    study = kt_search(sqlite_url, tiny_space)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 3
    failed = study.get_trials(states=(TrialState.FAIL,))[0]
    assert failed.user_attrs["error"].startswith("out of memory (try a smaller --batch-size")
    assert failed.user_attrs["error"].endswith("RuntimeError: out of memory (simulated)")


def test_resume_after_a_kill_adds_no_duplicate(sqlite_url, monkeypatch, tiny_space):
    """A process dying mid-trial, or between storing a trial and Keras Tuner recording it."""
    # The second trial's KeyboardInterrupt stands for SIGKILL: nothing after it runs.
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer(fail={2: KeyboardInterrupt()}))
    with pytest.raises(KeyboardInterrupt):
        kt_search(sqlite_url, tiny_space)
    study = optuna.load_study(study_name="kt", storage=sqlite_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # nothing left RUNNING

    original = kt_backend.MirroredTuner.on_trial_end

    def killed_after_storing(self, trial):
        self.mirror(trial)
        raise KeyboardInterrupt  # Keras Tuner never learns that the trial ended

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    monkeypatch.setattr(kt_backend.MirroredTuner, "on_trial_end", killed_after_storing)
    with pytest.raises(KeyboardInterrupt):
        kt_search(sqlite_url, tiny_space)
    assert len(study.trials) == 2

    monkeypatch.setattr(kt_backend.MirroredTuner, "on_trial_end", original)
    kt_search(sqlite_url, tiny_space)
    trials = study.get_trials()
    ids = [int(t.user_attrs[TRIAL_ID_ATTR]) for t in trials]
    assert len(trials) == 3 and sorted(ids) == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_backends_and_algorithms_do_not_mix(sqlite_url, monkeypatch, tiny_space):
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    kt_search(sqlite_url, tiny_space, trials=1)
    with pytest.raises(StudyMismatchError, match="backend"):
        tuner.search(tiny_space, "digits", trials=1, epochs=1, study="kt", storage=sqlite_url)
    with pytest.raises(StudyMismatchError, match="algorithm"):
        kt_search(sqlite_url, tiny_space, algorithm="bayesian")


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "annealing"}, "unknown Keras Tuner algorithm"),
    ({"workers": 2}, "--backend optuna"),
    ({"backend": "optuna"}, "--algorithm chooses a Keras Tuner tuner"),
])
def test_bad_keras_tuner_requests_fail_before_any_trial(sqlite_url, kwargs, message):
    with pytest.raises(TunerError, match=message):
        kt_search(sqlite_url, **kwargs)


def test_missing_keras_tuner_folder_is_refused(sqlite_url, tmp_path, monkeypatch, tiny_space):
    import shutil

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer())
    kt_search(sqlite_url, tiny_space, trials=1)
    shutil.rmtree(tmp_path / "tuner-keras-tuner" / "kt")
    with pytest.raises(TunerError, match="Keras Tuner folder .* is missing"):
        kt_search(sqlite_url, tiny_space, trials=2)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,space", [("bayesian", "tiny"), ("grid", "tiny"),
                                             pytest.param("hyperband", "resnet", marks=pytest.mark.core)])
def test_every_algorithm_trains_real_models(sqlite_url, algorithm, space, request):
    """Each algorithm trains, mirrors and exports real models: the ResNet space under Hyperband, the
    one-layer ``tiny`` space (``conftest.tiny_space``, a second a trial) under the others."""
    if space == "tiny":
        request.getfixturevalue("tiny_space")
    overrides = [*(TINY["resnet"] if space == "resnet" else []), "learning_rate=3e-3..3e-2"]
    study = kt_search(sqlite_url, space, algorithm=algorithm, trials=2, epochs=1, keep=1, overrides=overrides)
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(TRIAL_ATTRS <= set(trial.user_attrs) for trial in trials)
    assert max(t.user_attrs["test_accuracy"] for t in trials) > 0.3  # it learns: chance is 0.1
    exported = tuner.export("kt", "best.keras", storage=sqlite_url)
    assert exported["trial"] == study.best_trial.number


@pytest.mark.slow
def test_kill_9_mid_study_then_the_same_command_completes_it(sqlite_url, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from tuner.cli import main

    args = ["search", "--space", "resnet", "--backend", "keras-tuner", "--algorithm", "random",
            "--trials", "2", "--epochs", "2", "--batch-size", "32", "--study", "kt", "--storage", sqlite_url,
            "--keep", "0", "--recycle-after", "0", "--quiet", *(f"--set={item}" for item in TINY["resnet"])]
    process = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "TUNER_STORAGE": ""})
    oracle = tmp_path / "tuner-keras-tuner" / "kt" / "oracle.json"

    def second_trial_running() -> bool:
        """Keras Tuner's oracle has saved the second trial as ongoing (its folder alone comes
        first: killed between the two, the rerun starts a third trial instead)."""
        try:
            return "0001" in json.loads(oracle.read_text()).get("ongoing_trials", {}).values()
        except (OSError, ValueError):  # not written yet, or being written
            return False

    deadline = time.monotonic() + 120
    while not second_trial_running() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert second_trial_running(), "the second trial never started"
    process.send_signal(signal.SIGKILL)  # mid-trial: it is training the second configuration
    process.wait()
    study = optuna.load_study(study_name="kt", storage=sqlite_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]

    assert main(args) == 0
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(int(t.user_attrs[TRIAL_ID_ATTR]) for t in trials) == [0, 1]
