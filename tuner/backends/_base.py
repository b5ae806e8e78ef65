"""The contract of a search backend.

A backend chooses configurations and decides when a trial stops; ``job.runner`` trains them (so a
trial means the same whichever engine chose it, and the trial in flight ends by the deadline with its
best epoch). It runs until the study holds ``job.request.trials`` finished (COMPLETE or PRUNED)
trials or its deadline (``job.time_budget``) passes. Whatever engine chooses the parameters, every trial it runs must
end up in ``job.study`` (Optuna's storage is the only record) with its parameters, its objective
as intermediate values (their steps count training images: ``Resource``), its state, and the
attributes of ``TrialResult.attrs``.
A backend must never leave a trial RUNNING when it returns or raises.
"""

from __future__ import annotations

import datetime
from abc import ABC
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution

from search_spaces import ParamSpec
from storage import fail_orphaned_trials
from tuner._request import SearchRequest
from tuner._request import TimeBudget
from tuner.attributes import REJECTED_ATTR
from tuner.attributes import ROLE_ATTR
from tuner.attributes import SKIPPED_ATTR
from tuner.errors import TunerError
from tuner.models._models import ModelKeeper
from tuner.training._progress import SearchProgress
from tuner.training._trial import TrialRunner


class SearchAborted(TunerError):
    """Too many trials in a row failed; the last error says why."""


class ConsecutiveFailures:
    """Counts FAIL trials in a row; as an Optuna study callback it stops the study at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.last_error = ""
        self.tripped = False

    def record(self, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.FAIL:
            self.count = 0
            return
        self.count += 1
        self.last_error = trial.user_attrs.get("error", "unknown error")
        self.tripped = bool(self.limit) and self.count >= self.limit

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.record(trial)
        if self.tripped:
            study.stop()

    def aborted(self) -> SearchAborted:
        return SearchAborted(f"search stopped after {self.count} failed trials in a row; "
                             f"last error: {self.last_error}")


# The pruners' reduction factor: a third of the configurations judged at a rung go on to the next,
# which trains three times as many images.
REDUCTION_FACTOR = 3
# The fewest optimizer steps a rung below one epoch may train: fewer say little about a configuration.
MIN_RUNG_STEPS = 40


@dataclass(frozen=True)
class Resource:
    """What the pruners count: the training images a trial has seen (Optuna's ``step``).

    Counting images rather than epochs lets a pruner judge a configuration before its first epoch
    ends: on full Fashion-MNIST an epoch of the defaults takes about 70 s on 2 CPU cores, and a
    configuration judged only after it cost a minute or more. The first rung is a ninth or a third
    of an epoch, the smaller that trains ``MIN_RUNG_STEPS`` steps (a whole epoch on a small dataset);
    with ``REDUCTION_FACTOR`` 3 the rungs after it fall on epoch ends (1, 3, 9, 27 epochs).
    """

    train_images: int
    batch_size: int

    def at_epoch(self, epoch: int) -> int:
        """The step of the report after ``epoch`` (1-based) whole epochs."""
        return epoch * self.train_images

    @property
    def first_rung(self) -> int:
        """The pruners' smallest resource, in training images."""
        for part in (REDUCTION_FACTOR ** 2, REDUCTION_FACTOR):
            images = self.train_images // part
            if images >= MIN_RUNG_STEPS * self.batch_size:
                return images
        return self.train_images

    @property
    def in_first_epoch(self) -> tuple[int, ...]:
        """The rungs a trial reaches before its first epoch ends (none on a small dataset)."""
        rungs, images = [], self.first_rung
        while images < self.train_images:
            rungs.append(images)
            images *= REDUCTION_FACTOR
        return tuple(rungs)


def to_distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution of a Keras Tuner declaration (log sampling excludes a step in Optuna).

    Both backends record parameters with it, so a study's distributions are the same whichever
    engine chose the values.
    """
    c = spec.config
    if spec.kind in ("Int", "Float"):
        log = c.get("sampling") in ("log", "reverse_log")
        step = None if log else c.get("step")
        if spec.kind == "Int":
            return IntDistribution(int(c["min_value"]), int(c["max_value"]), log=log, step=int(step or 1))
        return FloatDistribution(float(c["min_value"]), float(c["max_value"]), log=log, step=step)
    if spec.kind == "Choice":
        return CategoricalDistribution(list(c["values"]))
    if spec.kind == "Boolean":
        return CategoricalDistribution([False, True])
    if spec.kind == "Fixed":
        return CategoricalDistribution([c["value"]])
    raise TypeError(f"unknown hyperparameter kind {spec.kind!r}")


@dataclass
class SearchJob:
    """What a backend runs: the checked request, its study, and the trial runner that trains a
    configuration; built by ``tuner.driver._search.prepare``.

    ``seed`` is this process's sampler seed (a worker's differs from the request's); trial ``n``'s
    weights are seeded with ``seed + n``. ``recipe`` holds the training settings (batch size,
    augmentation, precision...) that every trial records next to its hyperparameters.
    """

    request: SearchRequest
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    runner: TrialRunner
    progress: SearchProgress  # the runner's too
    overrides: dict[str, ParamSpec]
    recipe: dict[str, object]
    seed: int
    keeper: ModelKeeper | None = None
    alternatives: tuple[dict[str, object], ...] = ()  # enqueued after the defaults (``TryAlternatives``)
    process_trials: int | None = None  # the most trials this process runs (None: no limit)
    workdir: str | None = None  # the Keras Tuner backend's own folder for this study

    @property
    def resource(self) -> Resource:
        """What this search's pruner counts."""
        return Resource(len(self.runner.data.y_train), self.runner.batch_size)

    @property
    def time_budget(self) -> TimeBudget:
        """The search's wall-clock budget: its start, its end (the deadline) and when exploring ends."""
        return self.request.time_budget

    def finished_trials(self) -> int:
        """Trials that count towards the budget: COMPLETE and PRUNED, from every worker."""
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(counted(self.study.get_trials(deepcopy=False, states=states)))

    def stored_trials(self) -> int:
        """Every trial in the study, in any state (a rejected configuration too)."""
        return len(self.study.get_trials(deepcopy=False))

    def spent(self, since: datetime.datetime | None = None) -> bool:
        """Whether the search has nothing left to do: ``trials`` finished, the deadline passed, its
        final trial finished, or the last ``MAX_SKIPPED`` configurations it tried ``since`` it began
        were too slow for the time left (``MAX_REJECTED`` over ``--max-params``)."""
        trials = self.study.get_trials(deepcopy=False)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return (len(counted([t for t in trials if t.state in finished])) >= self.request.trials
                or self.time_budget.passed()
                or any(t.user_attrs.get(ROLE_ATTR) == FINAL and t.state in finished for t in since_then(trials, since))
                or trailing(trials, SKIPPED_ATTR, since) >= MAX_SKIPPED
                or trailing(trials, REJECTED_ATTR, since) >= MAX_REJECTED)


# Under --timeout, the search's last trial trains the best configuration found for all the time left:
# it records ``role: final`` (``tuner.driver._search`` and the race read it).
FINAL = "final"
# A space's known-good alternative to its defaults (``TunableSpace.alternatives``): tried right after
# them, and trained for ``--epochs`` without pruning so that it is compared with them on equal terms.
ALTERNATIVE = "alternative"


# Configurations in a row skipped as too slow for the time left before the search gives up.
MAX_SKIPPED = 5
# Configurations in a row rejected as over --max-params (each costs a model build) before it gives up.
MAX_REJECTED = 50


def since_then(trials: list[optuna.trial.FrozenTrial],
               since: datetime.datetime | None) -> list[optuna.trial.FrozenTrial]:
    """The trials started ``since`` then (none without a time): this search's, not an earlier one's."""
    return [t for t in trials if since is not None and t.datetime_start is not None and t.datetime_start >= since]


def trailing(trials: list[optuna.trial.FrozenTrial], attr: str, since: datetime.datetime | None) -> int:
    """How many of the study's last finished trials in a row, started ``since`` then, carry ``attr``
    (from every process, so a streak goes on across recycled worker processes; not from an earlier
    search, whose time left or limits were others)."""
    streak = 0
    for trial in sorted(trials, key=lambda t: t.number, reverse=True):
        if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        if attr not in trial.user_attrs or since is None or not trial.datetime_start or trial.datetime_start < since:
            break
        streak += 1
    return streak


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``--trials``: all but the skipped and rejected ones."""
    return [t for t in trials if SKIPPED_ATTR not in t.user_attrs and REJECTED_ATTR not in t.user_attrs]


def fail_orphans(study: optuna.Study, progress: SearchProgress) -> None:
    """Fail the study's trials whose process on this machine died (``storage.fail_orphaned_trials``),
    retrying each once, and say so."""
    for number in fail_orphaned_trials(study):
        progress.print(f"trial {number} FAIL  its process on this machine no longer runs (retried once)")


class SearchBackend(ABC):
    """One search engine. Subclasses live in private modules and are looked up by ``get_backend``."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, job: SearchJob) -> None:
        """Run trials of ``job`` until its budget is spent; see the module docstring for the contract."""
