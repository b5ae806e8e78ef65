"""The Optuna backend: Optuna's samplers and pruners drive the space's own ``build(hp)``.

``OptunaHyperParameters`` answers the Keras Tuner calls in ``build`` (``hp.Int``, ``hp.Float``,
``hp.Choice``, ``hp.Boolean``, ``hp.Fixed``) with ``trial.suggest_*``, so no space is defined twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from search_spaces import Declarations
from search_spaces import ParamSpec
from storage import record_owner
from tuner._cost import epoch_seconds
from tuner._cost import model_flops
from tuner._cost import seconds_per_flop
from tuner._cost import timed_rate
from tuner._cost import trace_seconds
from tuner._training import SAVE_SECONDS
from tuner._training import trial_error
from tuner.backends._base import SKIPPED_ATTR
from tuner.backends._base import ConsecutiveFailures
from tuner.backends._base import SearchAborted  # noqa: F401 - re-exported for callers
from tuner.backends._base import SearchBackend
from tuner.backends._base import SearchJob
from tuner.backends._base import counted
from tuner.backends._base import to_distribution


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """Ask ``trial`` for a value of ``name`` drawn from ``distribution``."""
    d = distribution
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    assert isinstance(d, CategoricalDistribution)
    return trial.suggest_categorical(name, d.choices)


class OptunaHyperParameters(Declarations):
    """A stand-in for ``keras_tuner.HyperParameters`` whose values come from an Optuna trial.

    ``overrides`` (from ``--set``) replace the declaration of the same name before sampling.
    Declarations whose condition does not hold are inactive: nothing is sampled and they return
    None, as in Keras Tuner.
    """

    def __init__(self, trial: optuna.Trial, overrides: Mapping[str, ParamSpec] | None = None):
        super().__init__()
        self.trial = trial
        self.overrides = dict(overrides or {})

    def value(self, spec: ParamSpec) -> Any:
        spec = self.overrides.get(spec.name, spec)
        return suggest(self.trial, spec.name, to_distribution(spec))


class OptunaBackend(SearchBackend):
    """Runs ``study.optimize`` with the study's sampler and pruner."""

    name = "optuna"

    def run(self, job: SearchJob) -> None:
        request = job.request
        if job.finished_trials() >= request.trials:
            return
        failures = ConsecutiveFailures(request.max_failures)
        budget = StudyBudget(request.trials, job.deadline)  # what ends the search: failed trials do not count
        job.study.optimize(
            lambda trial: run_trial(job, trial),
            n_trials=job.process_trials,
            timeout=None if job.deadline is None else max(job.deadline - time.time(), 0.0),
            catch=(Exception,),
            callbacks=[budget, failures, job.progress.trial_finished],
            gc_after_trial=True,
        )
        if budget.interrupted:
            raise KeyboardInterrupt
        if failures.tripped:
            raise failures.aborted()


def run_trial(job: SearchJob, trial: optuna.Trial) -> float:
    """Sample, train (``job.runner``) and test one configuration; record its metrics on the trial.

    With a deadline, the trial's epochs are planned from its predicted epoch time (``plan_epochs``):
    a configuration that cannot finish one epoch in the time left is not trained (stored PRUNED and
    ``skipped``), and one that cannot finish all of them gets as many as fit, its learning-rate
    schedule compressed to end with them. A trial cut by the deadline or by Ctrl-C after an epoch
    completes with its best epoch, then the search stops. The pruner decides after every epoch.
    """
    record_owner(trial)
    runner, max_epochs = job.runner, job.request.epochs
    seed = job.seed + trial.number
    for key, value in {**job.recipe, "seed": seed}.items():
        trial.set_user_attr(key, value)
    try:
        hp = OptunaHyperParameters(trial, job.overrides)
        model = runner.build(hp, seed)
        epochs, skip = plan_epochs(job, trial, model)
        if skip is None:
            if epochs < max_epochs:
                runner.schedule(model, hp, epochs)
                trial.set_user_attr("max_epochs", epochs)

            def report(epoch: int, logs: dict[str, float]) -> bool:
                value = logs.get(runner.objective, math.nan)
                if math.isfinite(value):
                    trial.report(value, epoch)
                # After the last epoch there is nothing left to save: the trial completes.
                return epoch < epochs and trial.should_prune()

            result = runner.fit(model, label=trial.number, params=hp.values, epochs=epochs, report=report,
                                planned=epochs < max_epochs)
    except Exception as err:
        trial.set_user_attr("error", trial_error(err))
        raise
    if skip is not None:
        trial.set_user_attr(SKIPPED_ATTR, skip)
        raise optuna.TrialPruned(skip)
    if result.stopped_by == "too_slow":  # a few steps of a partial epoch: nothing to record but why
        skip = (f"its first epoch would end after the deadline ({result.step_seconds:.3f} s a step, "
                f"{runner.steps_per_epoch} steps)")
        trial.set_user_attr(SKIPPED_ATTR, skip)
        raise optuna.TrialPruned(skip)
    for key, value in result.attrs().items():
        trial.set_user_attr(key, value)
    if result.pruned:
        raise optuna.TrialPruned(f"pruned after epoch {result.epochs}")
    if job.keeper is not None:
        job.keeper.offer(trial, result.model, result.value)
    if result.stopped_by is not None:  # the deadline or Ctrl-C: this was the last trial
        trial.study.stop()
    return result.value


def plan_epochs(job: SearchJob, trial: optuna.Trial, model: Any) -> tuple[int, str | None]:
    """The epochs this trial can train before the deadline, and why it is skipped (None: it is not).

    Records the model's FLOPs per image and its predicted seconds per epoch: from the rate of the
    study's trials timed at this batch size, or, with a deadline and no such trial yet, from a few
    timed training steps of this model (``timed_rate``). Without a deadline the trial gets every
    epoch. Epochs are planned to fill ``PLAN_FRACTION`` of the time left: an epoch the machine runs
    slower than predicted then still fits, and the schedule anneals to its end.
    """
    runner, max_epochs = job.runner, job.request.epochs
    data, batch_size = runner.data, runner.batch_size
    flops = model_flops(model)
    trial.set_user_attr("flops", flops)
    timed = job.study.get_trials(deepcopy=False)
    rate = seconds_per_flop(timed, batch_size)
    if rate is None:
        if job.deadline is None:
            return max_epochs, None
        rate = timed_rate(model, flops, data.x_train, data.y_train, batch_size)
    epoch = epoch_seconds(flops, rate, train_images=len(data.y_train), eval_images=len(data.y_val))
    trial.set_user_attr("predicted_seconds_per_epoch", round(epoch, 2))
    if job.deadline is None:
        return max_epochs, None
    # What the end of a trial needs: testing, writing the model, and a margin for tracing the
    # model's steps (measured per layer on the study's trials: a deep model traces for seconds).
    tracing = max(START_FRACTION * epoch, trace_seconds(timed, len(model.layers)) or 0.0)
    left = job.deadline - time.time() - SAVE_SECONDS - epoch_seconds(
        flops, rate, train_images=0, eval_images=len(data.y_test)) - tracing
    fit = int(PLAN_FRACTION * left // epoch)
    if fit < 1:
        return 0, (f"its first epoch needs ~{epoch:.0f} s and ~{tracing:.0f} s of tracing, "
                   f"{job.deadline - time.time():.0f} s are left")
    return min(max_epochs, fit), None


# The share of the time left that a trial's epochs are planned to fill: the rest absorbs a machine
# running slower than predicted (epochs on a shared 2-core machine vary by +-30%).
PLAN_FRACTION = 0.9
# Of an epoch, what a trial's start (tracing or compiling the model) is allowed at least when its
# epochs are planned against a deadline.
START_FRACTION = 0.1
# Configurations in a row skipped as too slow for the time left before the search gives up.
MAX_SKIPPED = 5


class StudyBudget:
    """Study callback that stops this worker once finished trials plus those still running elsewhere
    reach ``trials``, so N workers on one study end with ``trials`` in total, not N times as many;
    or once ``deadline`` leaves less time than the quickest epoch the study has measured, or after
    ``MAX_SKIPPED`` configurations in a row that could not finish an epoch in the time left; or after
    a trial that Ctrl-C cut short (then ``interrupted`` is set).

    (Optuna's ``MaxTrialsCallback`` ignores the trials other workers have in flight.)
    """

    def __init__(self, trials: int, deadline: float | None = None) -> None:
        self.trials = trials
        self.deadline = deadline
        self.interrupted = False
        self.skipped = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("stopped_by") == "interrupt":
            self.interrupted = True
            study.stop()
        self.skipped = self.skipped + 1 if SKIPPED_ATTR in trial.user_attrs else 0
        if self.skipped >= MAX_SKIPPED:
            study.stop()  # nothing the sampler proposes fits in the time left
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        if len(counted(study.get_trials(deepcopy=False, states=states))) >= self.trials:
            study.stop()
        if self.deadline is not None:
            epochs = [t.user_attrs["seconds_per_epoch"] for t in study.get_trials(deepcopy=False)
                      if t.user_attrs.get("seconds_per_epoch")  # whole epochs only:
                      and "stopped_by" not in t.user_attrs and SKIPPED_ATTR not in t.user_attrs]
            if epochs and time.time() + min(epochs) > self.deadline:
                study.stop()
