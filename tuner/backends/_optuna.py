"""The Optuna backend: Optuna's samplers and pruners drive the space's own ``build(hp)``.

``OptunaHyperParameters`` answers the Keras Tuner calls in ``build`` (``hp.Int``, ``hp.Float``,
``hp.Choice``, ``hp.Boolean``, ``hp.Fixed``) with ``trial.suggest_*``, so no space is defined twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from search_spaces import Declarations
from search_spaces import ParamSpec
from storage import StoreAway
from storage import gave_up
from storage import record_owner
from storage import while_training
from tuner._objectives import COST_BEFORE_TRAINING
from tuner._objectives import cheaper_peers_better
from tuner._objectives import sign
from tuner._request import TimeBudget
from tuner.attributes import BUDGET_SPLIT_ATTR
from tuner.attributes import CURVE_ATTR
from tuner.attributes import OVER_BUDGET_ATTR
from tuner.attributes import REJECTED_ATTR
from tuner.attributes import ROLE_ATTR
from tuner.attributes import SKIPPED_ATTR
from tuner.attributes import TRAIN_IMAGES_ATTR
from tuner.backends._base import ALTERNATIVE
from tuner.backends._base import FINAL
from tuner.backends._base import MAX_REJECTED
from tuner.backends._base import MAX_SKIPPED
from tuner.backends._base import ConsecutiveFailures
from tuner.backends._base import Resource
from tuner.backends._base import SearchAborted  # noqa: F401 - re-exported for callers
from tuner.backends._base import SearchBackend
from tuner.backends._base import SearchJob
from tuner.backends._base import counted
from tuner.backends._base import fail_orphans
from tuner.backends._base import since_then
from tuner.backends._base import to_distribution
from tuner.backends._base import trailing
from tuner.data import auto_augmentation
from tuner.training._cost import epoch_seconds
from tuner.training._cost import model_flops
from tuner.training._cost import seconds_per_flop
from tuner.training._cost import timed_rate
from tuner.training._cost import trace_seconds
from tuner.training._training import SAVE_SECONDS
from tuner.training._training import trial_error
from tuner.training._trial import TrialRunner


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
        fail_orphans(job.study, job.progress)  # a killed worker's trial: retried, not counted as running
        budget = StudyBudget(request.trials, job.time_budget)  # what ends the search: failed trials do not count
        if job.spent() or budget.full(job.study.get_trials(deepcopy=False)):
            return  # (a worker started late, or in place of a killed one, must not add a trial too many)
        failures = ConsecutiveFailures(request.max_failures)
        callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [
            lambda study, _: fail_orphans(study, job.progress),  # a killed worker's trial, retried now
            budget, failures, job.progress.trial_finished]
        until = None if request.multi_objective else job.time_budget.explore_end
        if until is not None:
            commit = Commit(request.trials, job.time_budget, portfolio=bool(job.alternatives))
            commit(job.study)  # the budget may leave room for the final trial alone
            callbacks.insert(0, commit)
        if job.alternatives:  # before Commit: the alternatives waiting, it waits for them
            callbacks.insert(0, TryAlternatives(job.alternatives, request.trials, until=until,
                                                final=job.time_budget.end is not None))
        try:
            job.study.optimize(
                lambda trial: run_trial(job, trial),
                n_trials=job.process_trials,
                timeout=None if job.time_budget.end is None else job.time_budget.left(),
                catch=(Exception,),
                callbacks=callbacks,
            )
        except Exception:
            # Past --store-timeout every store call fails; Optuna then ends its trial with an
            # UnboundLocalError of its own (``_run_trial`` reads the trial back after a failed tell).
            unreachable = gave_up(job.storage)
            if unreachable is not None:
                raise unreachable from None
            raise
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
    every epoch, and inside the first at its rungs there (``Resource``; in a multi-objective study
    after every epoch, ``prune_multi_objective``). A trial whose latency is
    over ``--max-latency-ms`` completes, infeasible: it keeps no model and is never the best.
    Returns the objective's value, or a tuple of them in a multi-objective study.
    """
    record_owner(trial)
    runner, request = job.runner, job.request
    max_epochs, limits = request.epochs, request.limits()
    seed = job.seed + trial.number
    choices = request.batch_choices()
    if choices:  # the batch size is a hyperparameter (--batch-size 32,64,128)
        runner = dataclasses.replace(runner, batch_size=trial.suggest_categorical("batch_size", list(choices)))
    for key, value in {**job.recipe, "batch_size": runner.batch_size, "seed": seed}.items():
        trial.set_user_attr(key, value)
    skip = None
    try:
        hp = OptunaHyperParameters(trial, job.overrides)
        model = runner.build(hp, seed)
        params = int(model.count_params())
        trial.set_user_attr("param_count", params)
        rejected = over_limit(trial, "param_count", params, limits)
        if rejected is None:
            plan, epochs, refused = plan_epochs(job, trial, model, runner)
            if refused is not None:
                kind, reason = refused
                rejected, skip = (reason, None) if kind == REJECTED_ATTR else (None, reason)
        if rejected is None and skip is None:
            if plan is not None and plan.images:  # explores on a subset of the training split
                runner = dataclasses.replace(runner, data=runner.data.subset(plan.images, request.seed))
            augment = final_augmentation(job, trial, epochs)
            if augment is not None:  # built again, with the augmentation its epochs call for
                runner = runner.with_augmentation(augment)
                hp = OptunaHyperParameters(trial, job.overrides)
                model = runner.build(hp, seed)
                trial.set_user_attr("augment", augment)
            if epochs != max_epochs or runner.steps_per_epoch != job.runner.steps_per_epoch:  # its own schedule
                runner.schedule(model, hp, epochs)
                trial.set_user_attr("max_epochs", epochs)

            started, answered = time.time(), []

            def replan(done: int, epoch_seconds: float, retrace: float) -> int | None:
                """The plan again, from the epochs measured, once each share of ``REPLAN_SHARES`` of
                its time has passed (``Replan``); None in between."""
                assert plan is not None
                shares = [share for share in REPLAN_SHARES if share not in answered]
                if not shares or time.time() - started < shares[0] * (plan.until - started):
                    return None
                answered.append(shares[0])
                again = max(plan.epochs(epoch_seconds, done=done, reserve=retrace), done)
                if again != epochs:
                    trial.set_user_attr("max_epochs", again)
                    trial.set_user_attr("planned_epochs", epochs)  # the plan from the prediction
                    job.progress.trial_epochs = again
                return again

            final = trial.user_attrs.get(ROLE_ATTR) == FINAL
            unpruned = final or trial.user_attrs.get(ROLE_ATTR) == ALTERNATIVE
            # Steps count the images trained (on a subset, its images an epoch).
            resource = dataclasses.replace(job.resource, train_images=len(runner.data.y_train))
            report = (multi_objective_report(job, trial, epochs) if request.multi_objective
                      else single_objective_report(trial, runner.objective, 0 if unpruned else epochs, resource))
            # Judged inside its first epoch too, where the pruner's first rung is there (``Resource``;
            # not on a subset, whose epoch ends before the pruner's rungs for the whole split).
            judged_early = not (unpruned or request.multi_objective or request.pruner == "none"
                                or resource != job.resource)
            note = (f"final: {epochs} epochs to the deadline" if final
                    else f"{epochs} epochs fit before the deadline" if epochs < max_epochs else None)
            # The final trial is not stopped by patience: it is planned to use the time left, and
            # keeps its best epoch anyway (a constant-rate final stopped after 32 of its 160 epochs,
            # with 237 of 600 s unused, on 5,000 Fashion-MNIST images).
            trainer = dataclasses.replace(runner, patience=None) if final else runner
            with while_training(job.storage):  # a store away does not stop the training
                result = trainer.fit(model, label=trial.number, params=hp.values, epochs=epochs, report=report,
                                     note=note, replan=None if plan is None else replan, hp=hp,
                                     rungs=job.resource.in_first_epoch if judged_early else (),
                                     on_rung=rung_report(trial, runner.objective))
    except optuna.TrialPruned:  # inside its first epoch (``rung_report``)
        raise
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
    if result.stopped_by is not None or trial.user_attrs.get(ROLE_ATTR) == FINAL:  # the last trial
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


def single_objective_report(trial: optuna.Trial, objective: str, epochs: int,
                            resource: Resource) -> Callable[[int, dict], bool]:
    """After each epoch: report the objective to Optuna at the epoch's step (``Resource``) and ask
    its pruner before epoch ``epochs`` (0: never, for the search's final trial)."""

    def report(epoch: int, logs: dict[str, float]) -> bool:
        # After the last epoch there is nothing left to save: the trial completes.
        return reported(trial, logs.get(objective, math.nan), resource.at_epoch(epoch), ask=epoch < epochs)

    return report


def rung_report(trial: optuna.Trial, objective: str) -> Callable[[int, dict], None]:
    """Inside the first epoch, after ``images`` training images: report the objective to Optuna and
    end the trial (``TrialPruned``) where its pruner says so."""

    def report(images: int, logs: dict[str, float]) -> None:
        if reported(trial, logs.get(objective, math.nan), images):
            raise optuna.TrialPruned(f"pruned after {images} training images, before its first epoch ended")

    return report


def reported(trial: optuna.Trial, value: float, step: int, ask: bool = True) -> bool:
    """Report ``value`` (if finite) at ``step``; whether the pruner (asked where ``ask``) stops the trial."""
    if math.isfinite(value):
        trial.report(value, step)
    try:
        return ask and trial.should_prune()
    except StoreAway:  # the pruner cannot read the study: train on
        return False


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
        try:
            return prune_multi_objective(job, trial.number, value, epoch, cost)
        except StoreAway:  # the other trials cannot be read: train on
            return False

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
                                maximize=sign(job.runner.objective) > 0)


@dataclass
class EpochPlan:
    """A trial's epochs against the deadline: as many as fill ``PLAN_FRACTION`` of the time left
    before ``until``, less ``ending`` seconds for its end, and at most ``cap`` (None: no cap)."""

    until: float
    ending: float
    cap: int | None
    images: int | None = None  # an exploring trial's training images, where it explores on a subset

    def epochs(self, epoch_seconds: float, done: int = 0, reserve: float = 0.0) -> int:
        """The epochs in all, ``done`` of them trained already, the others ``epoch_seconds`` each,
        with ``reserve`` more seconds kept (tracing a model compiled again)."""
        left = self.until - time.time() - self.ending - reserve
        fit = done + int(PLAN_FRACTION * left // epoch_seconds)
        return fit if self.cap is None else min(self.cap, fit)


def plan_epochs(job: SearchJob, trial: optuna.Trial, model: Any,
                runner: TrialRunner) -> tuple[EpochPlan | None, int, tuple[str, str] | None]:
    """The plan of this trial's epochs (None without a deadline) trained by ``runner``, the epochs it
    gives, and why the configuration is not trained (None: it is): ``(SKIPPED_ATTR, why)`` or ``(REJECTED_ATTR, why)``.

    Records the model's FLOPs per image and its predicted seconds per epoch: from the rate of the
    study's trials timed at this batch size, or, with a deadline and no such trial yet, from a few
    timed training steps of this model (``timed_rate``). Without a deadline the trial gets every
    epoch. With one, a trial explores until ``explore_end``, at most ``--epochs``, on a subset of the
    training split where the whole split is too large to explore (``explore_images``); the search's
    final trial (``is_final``) trains on all of it for the time left, however many epochs that is. Epochs are
    planned to fill ``PLAN_FRACTION`` of the time: an epoch the machine runs slower than predicted
    then still fits, and the schedule anneals to its end. After the second epoch the plan is made
    again from its measured time (``run_trial``'s ``replan``).

    A configuration whose epoch is too long for the final trial to train it ``MIN_EXPLORE_EPOCHS``
    times is not explored (rejected: were it the best, the search could not train it properly; but
    not the defaults and alternatives explored on a subset, one of which the final trial trains); one
    whose first epoch cannot end in the time left is skipped. Both record by how many seconds the epoch
    is too long as a violated ``epoch_seconds`` constraint, so the sampler learns what the time pays for.
    """
    max_epochs, end, until = job.request.epochs, job.time_budget.end, job.time_budget.explore_end
    data, batch_size = runner.data, runner.batch_size
    flops = model_flops(model)
    trial.set_user_attr("flops", flops)
    timed = job.study.get_trials(deepcopy=False)
    rate = seconds_per_flop(timed, batch_size)
    if rate is None:
        if end is None:
            return None, max_epochs, None
        rate = timed_rate(model, flops, data.x_train, data.y_train, batch_size)
    full = epoch = epoch_seconds(flops, rate, train_images=len(data.y_train), eval_images=len(data.y_val))
    role = trial.user_attrs.get(ROLE_ATTR)
    after = 0 if end is None else portfolio_after(job, role)  # the alternatives still to explore after it
    images = None if end is None else explore_images(job, trial, after, flops * rate, full)
    if images is not None:  # explored on a subset: not the final trial
        epoch = epoch_seconds(flops, rate, train_images=images, eval_images=len(data.y_val))
        trial.set_user_attr(TRAIN_IMAGES_ATTR, images)
    final = end is not None and images is None and is_final(job, trial, epoch)
    if final:
        record_final(job, trial)
    trial.set_user_attr("predicted_seconds_per_epoch", round(epoch, 2))
    if end is None:
        return None, max_epochs, None
    # What the end of a trial needs: testing, writing the model, and a margin for tracing the
    # model's steps (measured per layer on the study's trials: a deep model traces for seconds).
    tracing = max(START_FRACTION * epoch, trace_seconds(timed, len(model.layers)) or 0.0)
    ending = SAVE_SECONDS + epoch_seconds(flops, rate, train_images=0, eval_images=len(data.y_test)) + tracing
    assert until is not None
    plan = EpochPlan(until=end if final else share_until(until, after), ending=ending,
                     cap=None if final else max_epochs, images=images)
    # Rejected first: a configuration the final trial could not train properly would not be worth its
    # time even where it fits (counted as skips, ResNet-44s ended exploring at 335 s of 1800). Not the
    # space's defaults and alternatives explored on a subset: the final trial is one of them.
    affordable = (end - until) / MIN_EXPLORE_EPOCHS  # the longest epoch worth exploring
    portfolio = images is not None and (role == ALTERNATIVE or after > 0)
    if not final and not portfolio and until < end and full > affordable:
        trial.set_constraint("epoch_seconds", full - affordable)
        return None, 0, (REJECTED_ATTR, f"its epoch needs ~{full:.0f} s: the final trial's "
                                        f"{end - until:.0f} s could train it fewer than "
                                        f"{MIN_EXPLORE_EPOCHS} times")
    epochs = plan.epochs(epoch)
    if epochs < 1:
        trial.set_constraint("epoch_seconds", epoch - PLAN_FRACTION * (plan.until - time.time() - ending))
        return plan, 0, (SKIPPED_ATTR, f"its first epoch needs ~{epoch:.0f} s and ~{tracing:.0f} s of tracing, "
                                       f"{plan.until - time.time():.0f} s are left{'' if final else ' to explore'}")
    return plan, epochs, None


def explore_images(job: SearchJob, trial: optuna.Trial, after: int, image_seconds: float,
                   epoch: float) -> int | None:
    """The training images the search's exploring trials train on where the whole training split
    (an epoch of ``epoch`` seconds for the defaults) is too large to explore: a stratified subset
    (``Dataset.subset``) small enough for the defaults and the space's alternatives to train
    ``--epochs`` each, all together in ``SUBSET_SHARE`` of the timeout, at ``image_seconds`` a
    training image (an image validated costs a third); ``after`` alternatives follow this trial
    (``portfolio_after``). None: the whole split, where exploring's share
    of the timeout holds ``explore_epochs`` epochs of the defaults (as for a small dataset), where the
    subset would hold fewer than ``MIN_SUBSET_IMAGES`` or more than half the split (the defaults are
    then the final trial from the start, as for the quickstart's 75 s on ``digits``), and where no
    alternative is to follow the defaults (a space without them, ``--trials`` too few for them, a
    Pareto search, or a continued study, whose alternatives have run): a subset pays for comparing
    them, not for the sampler's random start-up trials.

    Decided by a new study's defaults trial; the alternatives (enqueued once it has ended) and any
    later trial of the same search explore on the same subset, so that their validation scores
    compare. The augmentation stays the recipe's, chosen for the whole split: the final trial's below
    30 epochs (as at 600 and 1800 s on 2 cores). (On 2 CPU cores, full Fashion-MNIST, the defaults'
    40 s epoch made them the final trial from the start at 600 s and 1800 s, though the alternative,
    trained alone for 1800 s, scored 0.59 points above them on the test split.)"""
    budget = job.time_budget
    if trial.user_attrs.get(ROLE_ATTR) == FINAL or budget.start is None or budget.end is None \
            or budget.explore_end is None:
        return None
    if after == 0 or trial.number != 0:  # not a new study's defaults, with alternatives to follow: as they trained
        began = datetime.datetime.fromtimestamp(budget.start)
        return next((t.user_attrs[TRAIN_IMAGES_ATTR] for t in since_then(job.study.get_trials(deepcopy=False), began)
                     if TRAIN_IMAGES_ATTR in t.user_attrs and t.number != trial.number), None)
    if budget.explore_end - time.time() >= explore_epochs(job.request.epochs) * epoch:
        return None
    data = job.runner.data
    per_epoch = SUBSET_SHARE * (budget.end - budget.start) / ((1 + after) * job.request.epochs)
    images = int(per_epoch / image_seconds - len(data.y_val) / 3)
    return images if MIN_SUBSET_IMAGES <= images <= len(data.y_train) // 2 else None


def final_augmentation(job: SearchJob, trial: optuna.Trial, epochs: int) -> str | None:
    """The augmentation of the search's final trial where ``--augment auto`` picks another for its
    ``epochs`` than for ``--epochs`` (``auto_augmentation``: shifts from 30 epochs); None: unchanged.

    Exploring trials train ``--epochs``, the final one as many as fill its time: without shifts the
    defaults' 41-epoch final trial over-fitted full Fashion-MNIST (training accuracy 1.000, 0.924
    validation against 0.926 after 10 epochs), where 49 epochs with them reached 0.937."""
    if job.request.augment != "auto" or trial.user_attrs.get(ROLE_ATTR) != FINAL:
        return None
    data = job.runner.data
    augment = auto_augmentation(data.name, len(data.y_train), epochs)
    return None if augment == job.runner.hypermodel.augment else augment


def portfolio_after(job: SearchJob, role: str | None) -> int:
    """How many of the space's alternatives are still to explore after this trial where it is one of
    them, or the defaults trial (the first, trained while no trial has ended and no alternative
    exists); 0 for any other trial. The defaults are followed by as many as ``TryAlternatives`` will
    enqueue (those the trials budget leaves room for beside the final trial)."""
    trials = job.study.get_trials(deepcopy=False)
    alternatives = [t for t in trials if t.user_attrs.get(ROLE_ATTR) == ALTERNATIVE]
    if role == ALTERNATIVE:
        return sum(t.state == TrialState.WAITING for t in alternatives)
    if alternatives or counted([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]):
        return 0
    return min(len(job.alternatives), max(job.request.trials - 2, 0))


def share_until(until: float, after: int) -> float:
    """When a trial explores until where ``after`` more trials share the time left before ``until``
    with it equally: the defaults and the space's alternatives each get the same time, so they are
    compared on equal terms, and the defaults' ``--epochs`` cannot take a short window alone (on
    5,000 Fashion-MNIST images, 2 cores, 600 s: the defaults' 10 epochs took 184 s of the 300 s to
    explore, and the alternative was never tried)."""
    now = time.time()
    return now + max(until - now, 0.0) / (1 + after)


def is_final(job: SearchJob, trial: optuna.Trial, epoch: float) -> bool:
    """Whether ``trial`` is the search's final trial: enqueued as such (``Commit``), or the first
    trial of a search with nothing to explore for: ``--trials 1``, or too little time before
    ``explore_end`` for ``explore_epochs`` epochs of this (``epoch`` seconds each)."""
    if trial.user_attrs.get(ROLE_ATTR) == FINAL:
        return True
    if job.request.multi_objective or job.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return False
    explore_end = job.time_budget.explore_end
    assert explore_end is not None
    return job.request.trials == 1 or explore_end - time.time() < explore_epochs(job.request.epochs) * epoch


def explore_epochs(max_epochs: int) -> int:
    """The epochs of the defaults that exploring must have room for to pay: ``EXPLORE_TRIALS``
    trials of ``--epochs`` epochs, and ``MIN_EXPLORE_EPOCHS`` at least."""
    return max(MIN_EXPLORE_EPOCHS, EXPLORE_TRIALS * max_epochs)


def record_final(job: SearchJob, trial: optuna.Trial) -> None:
    """Mark ``trial`` as the final one, and record on the study how the budget was split."""
    trial.set_user_attr(ROLE_ATTR, FINAL)
    budget = job.time_budget
    assert budget.end is not None
    now = time.time()
    explored = [t for t in counted(job.study.get_trials(deepcopy=False)) if t.number != trial.number]
    job.study.set_user_attr(BUDGET_SPLIT_ATTR, {
        "final_trial": trial.number,
        "explored_trials": len(explored),
        "explore_seconds": None if budget.start is None else round(now - budget.start, 1),
        "final_seconds": round(budget.end - now, 1),
    })


# The share of the time left that a trial's epochs are planned to fill: the rest absorbs a machine
# running slower than predicted (epochs on a shared 2-core machine vary by +-30%), also when planned
# again from a measured epoch (the later epochs of a quickstart's final trial ran 15-20% slower).
PLAN_FRACTION = 0.9
# A trial planned against the deadline is planned again once each of these shares of its time has
# passed, from the mean of the epochs measured since its last start: one planned again from its second
# epoch alone was cut by the deadline in one run and left 86 s of 600 unused in another (5,000
# Fashion-MNIST images); one planned again at a tenth only ended 320 s before an 1800 s deadline
# (its first epochs ran slower than the rest).
REPLAN_SHARES = (0.1, 0.5)
# The fewest epochs the final trial must be able to train an explored configuration for (an epoch
# too long for that is refused while exploring), and the fewest of the defaults that exploring's
# share of the timeout must hold (on 2 CPU cores, full Fashion-MNIST at 600 s: the defaults trained
# alone beat every search).
MIN_EXPLORE_EPOCHS = 20
# Exploring pays where its share of the timeout holds this many trials of --epochs epochs of the
# defaults (the first trial is the defaults themselves); below it the defaults are the final trial
# from the start, trained for the whole timeout. An 1800 s search on full Fashion-MNIST whose
# exploring half held 25 predicted epochs of the defaults explored nothing else (the defaults' 10
# epochs took 509 of its 900 s), then trained them again for half the time they get alone.
EXPLORE_TRIALS = 3
# The trials the time to explore must hold, each as long as the quickest so far, for the sampler's
# proposals to pay after the space's defaults and alternatives: TPE's start-up trials (10), which it
# draws at random. In a smaller window exploring ends with the alternatives. On 5,000 Fashion-MNIST
# images at 600 s (300 s to explore, 42 s a trial), the random configurations tried after them scored
# 0.78, 0.57, 0.23 and 0.85 validation against the alternative's 0.85 (seed 0), 0.49, 0.34, 0.45 and
# 0.59 against its 0.82 (seed 1), 0.45, 0.76, 0.65, 0.16, 0.75 and 0.82 against its 0.83 (seed 2),
# and took the final trial's time.
SAMPLER_TRIALS = 10
# Where the whole training split is too large to explore, the share of the timeout in which the
# defaults and the space's alternatives train --epochs each on a subset of it (``explore_images``),
# and the smallest subset worth comparing them on (below it the defaults are the final trial).
SUBSET_SHARE = 0.15
MIN_SUBSET_IMAGES = 1000
# Of an epoch, what a trial's start (tracing or compiling the model) is allowed at least when its
# epochs are planned against a deadline.
START_FRACTION = 0.1


class Commit:
    """Study callback that ends exploring: once the time left before the time budget's
    ``explore_end`` is shorter than the quickest complete trial took (from its start to its end), or
    the trials budget leaves room for one more trial, or the last ``MAX_SKIPPED`` configurations
    could not end an epoch before it (``MAX_REJECTED`` were refused as too costly to explore), or,
    for a space with alternatives (``portfolio``), once they have run where the whole time to explore
    holds fewer than ``SAMPLER_TRIALS`` trials: it enqueues the best complete trial's parameters as the
    final trial (``role: final``), which ``plan_epochs`` then trains for the time left. Once per
    study, whichever worker gets there first."""

    def __init__(self, trials: int, time_budget: TimeBudget, portfolio: bool = False) -> None:
        assert time_budget.explore_end is not None
        self.trials, self.explore_end, self.start = trials, time_budget.explore_end, time_budget.start
        self.portfolio = portfolio
        self.began = datetime.datetime.now()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> None:
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials) or any(
                t.user_attrs.get(ROLE_ATTR) == FINAL for t in since_then(trials, self.began)):
            return
        complete = [t for t in trials if t.state == TrialState.COMPLETE and "stopped_by" not in t.user_attrs]
        if not complete:
            return
        active = counted([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                           TrialState.RUNNING)])
        quickest = min((t.duration.total_seconds() for t in complete if t.duration), default=0.0)
        if (len(active) >= self.trials - 1 or time.time() + quickest >= self.explore_end
                or trailing(trials, SKIPPED_ATTR, self.began) >= MAX_SKIPPED  # nothing fits before it
                or trailing(trials, REJECTED_ATTR, self.began) >= MAX_REJECTED  # nothing is affordable
                or self.portfolio_explored(trials, quickest)):
            study.enqueue_trial(study.best_trial.params, user_attrs={ROLE_ATTR: FINAL})

    def portfolio_explored(self, trials: list[optuna.trial.FrozenTrial], quickest: float) -> bool:
        """Whether the space's alternatives have run (none waits or runs) in a time to explore too
        short for ``SAMPLER_TRIALS`` trials of ``quickest`` seconds, or on a subset of the training
        split (``explore_images``: the whole one too large to explore): all that exploring could try."""
        alternatives = [t for t in trials if t.user_attrs.get(ROLE_ATTR) == ALTERNATIVE]
        return (self.portfolio and self.start is not None and bool(alternatives)
                and all(t.state.is_finished() for t in alternatives)
                and (self.explore_end - self.start < SAMPLER_TRIALS * quickest
                     or any(TRAIN_IMAGES_ATTR in t.user_attrs for t in alternatives)))


class TryAlternatives:
    """Study callback that enqueues the space's known-good ``alternatives`` (``role: alternative``)
    once the defaults have run, while the search explores: after the study's first trained trial,
    with no trial waiting, before ``until`` (when exploring ends; None: never), and as many as leave
    room in ``trials`` (and for the final trial where ``final``); not after a trial that Ctrl-C or the
    deadline stopped. Once per study: never again once a trial of that role exists. Run before
    ``Commit``, which waits while they do (``share_until`` plans the defaults to leave them their
    time)."""

    def __init__(self, alternatives: Sequence[Mapping[str, Any]], trials: int, until: float | None,
                 final: bool) -> None:
        self.alternatives, self.trials, self.until, self.final = alternatives, trials, until, final

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> None:
        if trial is not None and "stopped_by" in trial.user_attrs:  # the search ends (Ctrl-C, the deadline)
            return
        if self.until is not None and time.time() >= self.until:
            return
        trials = study.get_trials(deepcopy=False)
        if (any(t.state == TrialState.WAITING or t.user_attrs.get(ROLE_ATTR) in (ALTERNATIVE, FINAL) for t in trials)
                or not counted([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])):
            return
        active = counted([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                           TrialState.RUNNING)])
        room = self.trials - len(active) - int(self.final)
        for values in self.alternatives[:max(room, 0)]:
            study.enqueue_trial(dict(values), user_attrs={ROLE_ATTR: ALTERNATIVE})


class StudyBudget:
    """Study callback that stops this worker once finished trials plus those still running elsewhere
    reach ``trials``, so N workers on one study end with ``trials`` in total, not N times as many;
    or once the end of ``time_budget`` leaves less time than the quickest epoch the study has measured, or after
    ``MAX_SKIPPED`` configurations in a row that could not finish an epoch in the time left, or
    ``MAX_REJECTED`` in a row over ``--max-params`` (the study's, across worker processes); or once
    the search's final trial runs or ran (never while it waits to run); or after a trial the search's end cut
    short; or after a trial that Ctrl-C cut short (then ``interrupted`` is set).

    (Optuna's ``MaxTrialsCallback`` ignores the trials other workers have in flight.)
    """

    def __init__(self, trials: int, time_budget: TimeBudget | None = None) -> None:
        self.trials = trials
        self.end = None if time_budget is None else time_budget.end
        self.interrupted = False
        self.began = datetime.datetime.now()  # as Optuna stamps a trial's start

    def full(self, trials: list[optuna.trial.FrozenTrial]) -> bool:
        """Whether finished trials and those running, in any worker, make ``trials``."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return len(counted([t for t in trials if t.state in states])) >= self.trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("stopped_by") == "interrupt":
            self.interrupted = True
            study.stop()
        trials = study.get_trials(deepcopy=False)
        if any(t.user_attrs.get(ROLE_ATTR) == FINAL and t.state == TrialState.WAITING for t in trials):
            return  # the final trial is next, whatever the streaks say
        if trial.user_attrs.get("stopped_by") == "deadline":
            study.stop()  # the search's end left this trial no more epochs: nor would it another one
        if trailing(trials, SKIPPED_ATTR, self.began) >= MAX_SKIPPED:
            study.stop()  # nothing the sampler proposes fits in the time left
        if trailing(trials, REJECTED_ATTR, self.began) >= MAX_REJECTED:
            study.stop()  # nothing the sampler proposes fits in --max-params
        if any(t.user_attrs.get(ROLE_ATTR) == FINAL for t in since_then(trials, self.began)):
            study.stop()  # exploring is over
        if self.full(trials):
            study.stop()
        if self.end is not None:
            epochs = [t.user_attrs["seconds_per_epoch"] for t in trials
                      if t.user_attrs.get("seconds_per_epoch")  # whole epochs only:
                      and "stopped_by" not in t.user_attrs and SKIPPED_ATTR not in t.user_attrs]
            if epochs and time.time() + min(epochs) > self.end:
                study.stop()
