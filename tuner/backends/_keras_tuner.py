"""The Keras Tuner backend: Keras Tuner's own oracles drive the space, every trial lands in the Optuna study.

Keras Tuner chooses the values (``random``, ``bayesian``, ``hyperband`` or ``grid``) and keeps its
own state in a folder per study, which is how it resumes. Training is ours (``train_and_evaluate``),
so a trial means the same as under the Optuna backend. When a Keras Tuner trial ends, and before
Keras Tuner records that it ended, it is written to the study as one Optuna trial: parameters with
the distributions of their declarations, the per-epoch objective as intermediate values, the state
and the same attributes, plus ``kt_trial_id``. A trial already in the study under that id is not
written again, so a study resumed after a crash holds each Keras Tuner trial once. A trial is
written only once it has ended, so a killed process leaves nothing RUNNING; Keras Tuner runs that
trial again on resume.

Keras Tuner's Hyperband trains a configuration in rounds of growing epoch budgets, each round a
trial that continues from its parent's weights. A round that stops short of ``--epochs`` is stored
as PRUNED, the last round COMPLETE; a round's learning curve starts with its parent's epochs.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras_tuner
import optuna
from optuna.trial import TrialState

from search_spaces import ParamSpec
from tuner._compat import keras_tuner_tracebacks_hidden
from tuner._compat import live_trial
from tuner._names import ALGORITHMS
from tuner._objectives import sign
from tuner.attributes import TRIAL_ID_ATTR
from tuner.backends._base import ConsecutiveFailures
from tuner.backends._base import SearchBackend
from tuner.backends._base import SearchJob
from tuner.backends._base import to_distribution
from tuner.errors import TunerError
from tuner.training._training import TrialResult
from tuner.training._training import trial_error

# Keras Tuner's own bookkeeping values (Hyperband's rounds); attributes of a trial, not parameters.
PRIVATE_PREFIX = "tuner/"
# Keras Tuner marks a trial COMPLETED, FAILED (given up) or INVALID (an error; FAILED without retries).
STATES = {"COMPLETED": TrialState.COMPLETE, "FAILED": TrialState.FAIL, "INVALID": TrialState.FAIL}


class _StopSearch(Exception):
    """Raised before a new Keras Tuner trial when the budget or the time is spent."""


def make_oracle(algorithm: str, job: SearchJob) -> keras_tuner.Oracle:
    """Keras Tuner's oracle for ``algorithm``, over the space narrowed by ``job.overrides``.

    Hyperband runs as many iterations as the study's trial budget allows; the budget, not Keras
    Tuner's ``max_trials``, ends a search, so it counts the same finished trials as the Optuna backend.
    """
    request = job.request
    direction = "max" if sign(request.curve_objective) > 0 else "min"
    objective = keras_tuner.Objective(request.curve_objective, direction)
    hp = keras_tuner.HyperParameters()
    for spec in job.runner.hypermodel.hyperparameters():  # the whole space, in order: parents first
        job.overrides.get(spec.name, spec).declare(hp)  # a narrowed spec wins over the space's own
    common = {"objective": objective, "hyperparameters": hp, "seed": job.seed,
              "max_consecutive_failed_trials": 10**9}  # ours counts (SearchAborted)
    if algorithm == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=None, **common)
    if algorithm == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=None, **common)
    if algorithm == "grid":
        return keras_tuner.oracles.GridSearchOracle(max_trials=None, **common)
    if algorithm == "hyperband":
        return keras_tuner.oracles.HyperbandOracle(max_epochs=request.epochs, factor=3,
                                                   hyperband_iterations=None, **common)
    raise TunerError(f"unknown Keras Tuner algorithm {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")


def split_values(hp: keras_tuner.HyperParameters) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's space values, and Keras Tuner's own ``tuner/...`` values (Hyperband's bookkeeping)."""
    values = dict(hp.values)
    private = {k: values.pop(k) for k in list(values) if k.startswith(PRIVATE_PREFIX)}
    return values, private


def optuna_params(hp: keras_tuner.HyperParameters) -> tuple[dict[str, Any], dict[str, Any]]:
    """The active values of ``hp`` as Optuna params, each with the distribution of its declaration."""
    params, distributions = {}, {}
    for declaration in hp.space:
        name = declaration.name
        if name.startswith(PRIVATE_PREFIX) or not hp.is_active(declaration) or name not in hp.values:
            continue
        distribution = to_distribution(ParamSpec.from_keras_tuner(declaration))
        params[name], distributions[name] = hp.values[name], distribution
    return params, distributions


def optuna_state(status: str, epochs_trained: int, max_epochs: int) -> TrialState:
    """The Optuna state of a Keras Tuner trial that ended with ``status`` after ``epochs_trained``.

    A completed trial that trained fewer epochs than the most a trial gets was stopped there by
    Hyperband: PRUNED. (Early stopping on a plateau still ends a trial COMPLETE, as in the Optuna
    backend; it is ``max_epochs`` that a Hyperband round lowers.)
    """
    state = STATES.get(status, TrialState.FAIL)
    if state == TrialState.COMPLETE and epochs_trained < max_epochs:
        return TrialState.PRUNED
    return state


@contextlib.contextmanager
def exclusive(folder: Path, study: str) -> Iterator[None]:
    """Hold the study's Keras Tuner folder alone: its oracle is one process's state, not shareable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TunerError(f"cannot create the Keras Tuner folder {folder}: {err}") from None
    with open(folder / "tuner.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TunerError(
                f"study {study!r} is being searched by another Keras Tuner process ({folder}); Keras "
                "Tuner keeps its state in one process: wait for it, or use --backend optuna for "
                "several workers") from None
        yield


class MirroredTuner(keras_tuner.Tuner):
    """A Keras Tuner ``Tuner`` that trains with tuner's trial loop and writes each trial to the study."""

    def __init__(self, job: SearchJob, oracle: keras_tuner.Oracle, folder: Path) -> None:
        super().__init__(oracle=oracle, hypermodel=job.runner.hypermodel, directory=str(folder.parent),
                         project_name=folder.name, overwrite=False)
        self.job = job
        self.interrupted = False
        self.cut = False
        self.started = 0
        self.results: dict[str, TrialResult] = {}
        self.models: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.curves: dict[str, dict[int, float]] = {}
        self.started_at: dict[str, datetime.datetime] = {}
        self.failures = ConsecutiveFailures(job.request.max_failures)

    # The search loop: Keras Tuner calls these in order for every trial.

    def pre_create_trial(self) -> None:
        job = self.job
        if self.interrupted:
            raise KeyboardInterrupt  # the trial Ctrl-C cut short is stored: now stop
        if self.cut or job.time_budget.passed():
            raise _StopSearch("timeout")  # a trial the deadline cut leaves no time for another
        if job.finished_trials() >= job.request.trials:
            raise _StopSearch("budget")
        if job.process_trials and self.started >= job.process_trials:
            raise _StopSearch("process")

    def on_trial_begin(self, trial: keras_tuner.engine.trial.Trial) -> None:
        self.started += 1
        self.started_at[trial.trial_id] = datetime.datetime.now()

    def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        job, runner = self.job, self.job.runner
        hp = trial.hyperparameters
        values, private = split_values(hp)
        epochs = int(private.get("tuner/epochs", job.request.epochs))
        initial_epoch = int(private.get("tuner/initial_epoch", 0))
        curve = dict(self.parent_curve(private.get("tuner/trial_id"), initial_epoch))
        self.curves[trial.trial_id] = curve
        try:
            model = runner.build(hp, job.seed + int(trial.trial_id))
            if "tuner/trial_id" in private:  # a Hyperband round continues its parent's weights
                model.optimizer.build(model.trainable_variables)  # and its optimizer's moments
                model.load_weights(self.round_weights(private["tuner/trial_id"]))

            def report(epoch: int, logs: dict[str, float]) -> bool:
                value = logs.get(runner.objective, math.nan)
                if math.isfinite(value):
                    curve[job.resource.at_epoch(epoch)] = value
                return False  # Hyperband decides between rounds, not within one

            result = runner.fit(model, label=f"kt-{trial.trial_id}", params=values, epochs=epochs,
                                initial_epoch=initial_epoch, report=report)
            self.interrupted = result.stopped_by == "interrupt"
            self.cut = result.stopped_by == "deadline"
            if result.stopped_by == "too_slow":
                raise TunerError("stopped in its first epoch, which could not end before the deadline")
        except Exception as err:
            self.errors[trial.trial_id] = trial_error(err)
            raise
        if epochs < job.request.epochs:  # a Hyperband round that may be continued by a later one
            model.save_weights(self.round_weights(trial.trial_id))
        self.results[trial.trial_id] = result
        self.models[trial.trial_id] = result.model  # as tested: the one to keep
        return {runner.objective: result.value}

    def on_trial_end(self, trial: keras_tuner.engine.trial.Trial) -> None:
        # Into the study first: a crash between the two leaves a trial Keras Tuner reruns and the
        # study already has (skipped then), never one the study lacks.
        stored = self.mirror(trial)
        super().on_trial_end(trial)
        if stored is not None:
            self.failures.record(stored)
            if self.failures.tripped:
                raise self.failures.aborted()

    def round_weights(self, trial_id: str) -> str:
        """Where a Hyperband round's weights wait for the round that continues it: the trial's folder
        (``get_trial_dir``), under the name Keras Tuner gives its own checkpoints, so folders written
        before tuner chose the path itself resume as they did."""
        return str(Path(self.get_trial_dir(trial_id)) / "checkpoint.weights.h5")

    # Writing a trial to the study.

    def parent_curve(self, parent_id: str | None, upto: int) -> dict[int, float]:
        """The parent round's intermediate values up to epoch ``upto``, from the study."""
        upto = self.job.resource.at_epoch(upto)
        if parent_id is None:
            return {}
        for stored in self.job.study.get_trials(deepcopy=False):
            if stored.user_attrs.get(TRIAL_ID_ATTR) == parent_id:
                return {step: v for step, v in stored.intermediate_values.items() if step <= upto}
        return {}

    def mirror(self, trial: keras_tuner.engine.trial.Trial) -> optuna.trial.FrozenTrial | None:
        """Write the ended Keras Tuner ``trial`` to the study, once; returns it as stored (None: it was)."""
        job, trial_id = self.job, trial.trial_id
        model = self.models.pop(trial_id, None)
        result = self.results.pop(trial_id, None)
        if trial_id in mirrored_ids(job.study):
            return None
        _, private = split_values(trial.hyperparameters)
        status = trial.status if result is not None else "FAILED"
        max_epochs = job.request.epochs
        state = optuna_state(status, int(private.get("tuner/epochs", max_epochs)), max_epochs)
        attrs: dict[str, Any] = {**job.recipe, TRIAL_ID_ATTR: trial_id, "algorithm": job.request.algorithm,
                                 "seed": job.seed + int(trial_id)}
        attrs.update({key.replace("/", "_"): value for key, value in private.items()})
        if result is not None:
            attrs.update(result.attrs())
        if state == TrialState.FAIL:
            attrs["error"] = self.errors.pop(trial_id, None) or _last_line(trial.message) or "failed"
        curve = self.curves.pop(trial_id, {})
        params, distributions = optuna_params(trial.hyperparameters)
        template = optuna.trial.FrozenTrial(
            number=-1, trial_id=-1, state=TrialState.RUNNING, value=None,
            datetime_start=self.started_at.pop(trial_id, datetime.datetime.now()), datetime_complete=None,
            params=params, distributions=distributions, user_attrs=attrs, system_attrs={},
            intermediate_values=curve,
        )
        # Added RUNNING and then told its state, as a trial of the Optuna backend ends: the kept model
        # is written to a running trial, and a pruned one gets its last reported value from Optuna.
        job.study.add_trial(template)
        added = stored_trial(job.study, trial_id)
        value = result.value if state == TrialState.COMPLETE and result is not None else None
        if value is not None and job.keeper is not None:
            job.keeper.offer(live_trial(job.study, added), model, value)
        frozen = job.study.tell(added.number, value, state=state)
        job.progress.trial_finished(job.study, frozen)
        return frozen


def stored_trial(study: optuna.Study, trial_id: str) -> optuna.trial.FrozenTrial:
    """The study's trial mirroring Keras Tuner's ``trial_id``: found by that id, not as the newest
    trial, which another worker's trial may be."""
    return next(t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(TRIAL_ID_ATTR) == trial_id)


def mirrored_ids(study: optuna.Study) -> dict[str, int]:
    """Keras Tuner trial id -> Optuna trial number, for the trials already in the study."""
    return {t.user_attrs[TRIAL_ID_ATTR]: t.number for t in study.get_trials(deepcopy=False)
            if TRIAL_ID_ATTR in t.user_attrs}


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else ""


class KerasTunerBackend(SearchBackend):
    """Runs one of Keras Tuner's tuners over the space, mirroring each trial into the study."""

    name = "keras-tuner"

    def run(self, job: SearchJob) -> None:
        if job.finished_trials() >= job.request.trials:
            return
        folder = Path(job.workdir or "keras-tuner") / job.study.study_name
        with exclusive(folder, job.study.study_name):
            check_resumable(job.study, folder)
            tuner = MirroredTuner(job, make_oracle(str(job.request.algorithm), job), folder)
            try:
                with keras_tuner_tracebacks_hidden():  # ours is one line, with the trial's state
                    tuner.search(verbose=0)
            except _StopSearch:
                pass


def check_resumable(study: optuna.Study, folder: Path) -> None:
    """Refuse to restart Keras Tuner from nothing on a study it already wrote trials to.

    Keras Tuner numbers trials from 0 in a new folder, so its trials would collide with the stored ones.
    """
    if mirrored_ids(study) and not (folder / "oracle.json").exists():
        raise TunerError(
            f"study {study.study_name!r} has Keras Tuner trials but its Keras Tuner folder {folder} is "
            "missing (it holds the search state): restore it, or start a new --study")
