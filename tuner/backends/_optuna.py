"""The Optuna backend: Optuna's samplers and pruners drive the space's own ``build(hp)``.

``OptunaHyperParameters`` answers the Keras Tuner calls in ``build`` (``hp.Int``, ``hp.Float``,
``hp.Choice``, ``hp.Boolean``, ``hp.Fixed``) with ``trial.suggest_*``, so no space is defined twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
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
from tuner._objectives import COST_BEFORE_TRAINING
from tuner._objectives import DIRECTIONS
from tuner._objectives import cheaper_peers_better
from tuner._training import SAVE_SECONDS
from tuner._training import trial_error
from tuner.backends._base import CURVE_ATTR
from tuner.backends._base import OVER_BUDGET_ATTR
from tuner.backends._base import REJECTED_ATTR
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
        )
        if budget.interrupted:
            raise KeyboardInterrupt
        if failures.tripped:
            raise failures.aborted()


def run_trial(job: SearchJob, trial: optuna.Trial) -> float | tuple[float, ...]:
    """Sample, train (``job.runner``) and test one configuration; record its metrics on the trial.

    A configuration over ``--max-params`` is not trained: it is stored PRUNED and ``rejected``, with
    its parameter count as a violated constraint (Optuna's samplers learn to avoid it), and does not
    count as a trial. With a deadline, the trial's epochs are planned from its predicted epoch time
    (``plan_epochs``): a configuration that cannot finish one epoch in the time left is not trained
    (stored PRUNED and ``skipped``), and one that cannot finish all of them gets as many as fit, its
    learning-rate schedule compressed to end with them. A trial cut by the deadline or by Ctrl-C
    after an epoch completes with its best epoch, then the search stops. The pruner decides after
    every epoch (in a multi-objective study, ``prune_multi_objective``). A trial whose latency is
    over ``--max-latency-ms`` completes, infeasible: it keeps no model and is never the best.
    Returns the objective's value, or a tuple of them in a multi-objective study.
    """
    record_owner(trial)
    runner, request = job.runner, job.request
    max_epochs, limits = request.epochs, request.limits()
    seed = job.seed + trial.number
    for key, value in {**job.recipe, "seed": seed}.items():
        trial.set_user_attr(key, value)
    skip = None
    try:
        hp = OptunaHyperParameters(trial, job.overrides)
        model = runner.build(hp, seed)
        params = int(model.count_params())
        trial.set_user_attr("param_count", params)
        rejected = over_limit(trial, "param_count", params, limits)
        if rejected is None:
            epochs, skip = plan_epochs(job, trial, model)
        if rejected is None and skip is None:
            if epochs < max_epochs:
                runner.schedule(model, hp, epochs)
                trial.set_user_attr("max_epochs", epochs)
            report = (multi_objective_report(job, trial, epochs) if request.multi_objective
                      else single_objective_report(trial, runner.objective, epochs))
            result = runner.fit(model, label=trial.number, params=hp.values, epochs=epochs, report=report,
                                planned=epochs < max_epochs)
    except Exception as err:
        trial.set_user_attr("error", trial_error(err))
        raise
    if rejected is not None:
        trial.set_user_attr(REJECTED_ATTR, rejected)
        raise optuna.TrialPruned(rejected)
    if skip is not None:
        trial.set_user_attr(SKIPPED_ATTR, skip)
        raise optuna.TrialPruned(skip)
    if result.stopped_by == "too_slow":  # a few steps of a partial epoch: nothing to record but why
        skip = (f"its first epoch would end after the deadline ({result.step_seconds:.3f} s a step, "
                f"{runner.steps_per_epoch} steps)")
        trial.set_user_attr(SKIPPED_ATTR, skip)
        raise optuna.TrialPruned(skip)
    attrs = result.attrs()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if result.pruned:
        raise optuna.TrialPruned(f"pruned after epoch {result.epochs}")
    values = tuple(float(result.value if name == runner.objective else attrs.get(name, math.nan))
                   for name in request.objectives)
    over = over_limit(trial, "latency_ms", float(attrs.get("latency_ms", math.nan)), limits)
    if over is not None:
        trial.set_user_attr(OVER_BUDGET_ATTR, over)
    elif job.keeper is not None:
        job.keeper.offer(trial, result.model, values if request.multi_objective else values[0])
    if result.stopped_by is not None:  # the deadline or Ctrl-C: this was the last trial
        trial.study.stop()
    return values if request.multi_objective else values[0]


def over_limit(trial: optuna.Trial, metric: str, value: float, limits: Mapping[str, float]) -> str | None:
    """Record ``metric``'s budget as the trial's constraint (feasible at 0 or less); why it is over, or None."""
    if metric not in limits or not math.isfinite(value):  # not measured: a trial cut short by Ctrl-C
        return None
    trial.set_constraint(metric, value - limits[metric])
    if value <= limits[metric]:
        return None
    flag = {"param_count": "--max-params", "latency_ms": "--max-latency-ms"}[metric]
    return f"{metric} {value:g} is over {flag} {limits[metric]:g}"


def single_objective_report(trial: optuna.Trial, objective: str, epochs: int) -> Callable[[int, dict], bool]:
    """After each epoch: report the objective to Optuna and ask its pruner."""

    def report(epoch: int, logs: dict[str, float]) -> bool:
        value = logs.get(objective, math.nan)
        if math.isfinite(value):
            trial.report(value, epoch)
        # After the last epoch there is nothing left to save: the trial completes.
        return epoch < epochs and trial.should_prune()

    return report


def multi_objective_report(job: SearchJob, trial: optuna.Trial, epochs: int) -> Callable[[int, dict], bool]:
    """After each epoch: record the curve objective (``curve``: Optuna refuses ``trial.report`` in a
    multi-objective study) and apply ``prune_multi_objective`` unless ``--pruner none``."""
    objective = job.runner.objective
    curve: list[float] = []
    cost = trial_cost(trial.user_attrs, job.request.objectives)

    def report(epoch: int, logs: dict[str, float]) -> bool:
        value = logs.get(objective, math.nan)
        curve.append(value if math.isfinite(value) else None)  # type: ignore[arg-type]
        trial.set_user_attr(CURVE_ATTR, curve)
        if epoch >= epochs or job.request.pruner == "none" or not math.isfinite(value):
            return False
        return prune_multi_objective(job, trial.number, value, epoch, cost)

    return report


def trial_cost(attrs: Mapping[str, Any], objectives: Sequence[str]) -> tuple[float, ...]:
    """What a trial costs, known before training, for each cost objective (``COST_BEFORE_TRAINING``)."""
    return tuple(float(attrs.get(COST_BEFORE_TRAINING[name], math.inf))
                 for name in objectives if name in COST_BEFORE_TRAINING)


def prune_multi_objective(job: SearchJob, number: int, value: float, epoch: int, cost: tuple[float, ...]) -> bool:
    """The multi-objective pruning rule (``cheaper_peers_better``) against the study's other trials
    that have a curve: finished, pruned, or still running in another worker."""
    peers = [(t.user_attrs[CURVE_ATTR], trial_cost(t.user_attrs, job.request.objectives))
             for t in job.study.get_trials(deepcopy=False)
             if t.number != number and CURVE_ATTR in t.user_attrs]
    return cheaper_peers_better(value, epoch, cost, peers,
                                maximize=DIRECTIONS[job.runner.objective] == "maximize")


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
# Configurations in a row rejected as over --max-params (each costs a model build) before it gives up.
MAX_REJECTED = 50


class StudyBudget:
    """Study callback that stops this worker once finished trials plus those still running elsewhere
    reach ``trials``, so N workers on one study end with ``trials`` in total, not N times as many;
    or once ``deadline`` leaves less time than the quickest epoch the study has measured, or after
    ``MAX_SKIPPED`` configurations in a row that could not finish an epoch in the time left, or
    ``MAX_REJECTED`` in a row over ``--max-params``; or after
    a trial that Ctrl-C cut short (then ``interrupted`` is set).

    (Optuna's ``MaxTrialsCallback`` ignores the trials other workers have in flight.)
    """

    def __init__(self, trials: int, deadline: float | None = None) -> None:
        self.trials = trials
        self.deadline = deadline
        self.interrupted = False
        self.skipped = self.rejected = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("stopped_by") == "interrupt":
            self.interrupted = True
            study.stop()
        self.skipped = self.skipped + 1 if SKIPPED_ATTR in trial.user_attrs else 0
        if self.skipped >= MAX_SKIPPED:
            study.stop()  # nothing the sampler proposes fits in the time left
        self.rejected = self.rejected + 1 if REJECTED_ATTR in trial.user_attrs else 0
        if self.rejected >= MAX_REJECTED:
            study.stop()  # nothing the sampler proposes fits in --max-params
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        if len(counted(study.get_trials(deepcopy=False, states=states))) >= self.trials:
            study.stop()
        if self.deadline is not None:
            epochs = [t.user_attrs["seconds_per_epoch"] for t in study.get_trials(deepcopy=False)
                      if t.user_attrs.get("seconds_per_epoch")  # whole epochs only:
                      and "stopped_by" not in t.user_attrs and SKIPPED_ATTR not in t.user_attrs]
            if epochs and time.time() + min(epochs) > self.deadline:
                study.stop()
