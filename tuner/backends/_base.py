"""The contract of a search backend.

A backend runs trials of ``job.hypermodel`` until the study holds ``job.trials`` finished (COMPLETE
or PRUNED) trials or ``job.timeout`` passes. Whatever engine chooses the parameters, every trial it
runs must end up in ``job.study`` (Optuna's storage is the only record) with its parameters, its
per-epoch objective as intermediate values, its state, and the attributes of ``TrialResult.attrs``.
A backend must never leave a trial RUNNING when it returns or raises.
"""

from __future__ import annotations

from abc import ABC
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import optuna

from search_spaces import ParamSpec
from search_spaces import TunableSpace
from tuner._models import ModelKeeper
from tuner._progress import SearchProgress
from tuner.data import Dataset
from tuner.errors import TunerError

BACKENDS = ("optuna",)


@dataclass
class SearchJob:
    """Everything a backend needs to run a search; built and checked by ``tuner.search``."""

    study: optuna.Study
    hypermodel: TunableSpace
    data: Dataset
    overrides: dict[str, ParamSpec]
    objective: str
    trials: int
    epochs: int
    batch_size: int
    timeout: float | None
    seed: int
    max_failures: int
    patience: int | None
    precision: str
    progress: SearchProgress
    recipe: dict[str, object]
    keeper: ModelKeeper | None = None
    process_trials: int | None = None  # the most trials this process runs (None: no limit)

    # ``recipe`` holds the training flags (batch size, augmentation, precision...) that every
    # trial records as attributes next to its hyperparameters.

    def finished_trials(self) -> int:
        """Trials that count towards the budget: COMPLETE and PRUNED, from every worker."""
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))


class SearchBackend(ABC):
    """One search engine. Subclasses live in private modules and are looked up by ``get_backend``."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, job: SearchJob) -> None:
        """Run trials of ``job`` until its budget is spent; see the module docstring for the contract."""


def get_backend(name: str) -> SearchBackend:
    """The backend called ``name``; an unknown name lists the valid ones."""
    if name == "optuna":
        from tuner.backends._optuna import OptunaBackend

        return OptunaBackend()
    raise TunerError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
