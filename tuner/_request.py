"""What a user asks a search for: one serialisable request, checked before anything runs.

``tuner.search(...)`` and ``tuner search`` build a ``SearchRequest``; ``checked()`` refuses every
mistake that needs no data, store or framework (names, numbers, combinations) and fills in what
follows from the rest (the study's name, the deadline, the Keras Tuner algorithm). Worker
processes receive the checked request itself, so every process runs the search the user asked for.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner._images import parse_image_size
from tuner._names import ALGORITHMS
from tuner._names import AUGMENT_CHOICES
from tuner._names import BACKENDS
from tuner._names import PRECISIONS
from tuner._names import PRUNERS
from tuner._names import RESIZE_MODES
from tuner._names import SAMPLERS
from tuner._objectives import curve_objective
from tuner._objectives import parse_count
from tuner._objectives import parse_objectives
from tuner.errors import STORE_TIMEOUT
from tuner.errors import TunerError


@dataclass(frozen=True)
class SearchRequest:
    """The arguments of ``tuner.search``; see its docstring for what each means."""

    space: str = "resnet"
    dataset: str = "digits"
    trials: int = 10
    epochs: int = 10
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int = 0
    overrides: Mapping[str, str] | Sequence[str] | None = None
    objective: str | Sequence[str] = "val_accuracy"  # "a,b": a Pareto front
    batch_size: int | None = None
    patience: int | None = 5
    augment: str = "auto"
    label_smoothing: float = 0.0
    precision: str = "auto"
    backend: str = "optuna"
    algorithm: str | None = None
    max_failures: int = 5
    keep: int = 3
    artifacts: str | None = None
    start_from_defaults: bool = True
    workers: int = 1
    gpus: Sequence[str] | None = None
    recycle_after: int | None = None
    progress: bool | str = False
    deadline: float | None = None
    max_params: int | str | None = None
    max_latency_ms: float | None = None
    image_size: int | str | Sequence[int] | None = None  # image files: N or HxW; None: from the data
    resize: str = "crop"
    store_timeout: float = STORE_TIMEOUT  # seconds a search waits for an unreachable store

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives in order: one, or two or three for a Pareto front (``--objective a,b``)."""
        return parse_objectives(self.objective)

    @property
    def curve_objective(self) -> str:
        """The objective each trial's training curve follows (its best epoch, the pruner)."""
        return curve_objective(self.objectives)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def limits(self) -> dict[str, float]:
        """The budgets a trial must stay within to be feasible, by metric."""
        found = {"param_count": self.max_params, "latency_ms": self.max_latency_ms}
        return {name: float(limit) for name, limit in found.items() if limit is not None}

    def checked(self) -> SearchRequest:
        """This request with its mistakes refused (``TunerError``) and its implied values filled in."""
        objectives = parse_objectives(self.objective)
        max_params = parse_count(self.max_params)
        _positive("max-latency-ms", self.max_latency_ms, allow_none=True)
        for flag, value in (("trials", self.trials), ("epochs", self.epochs)):
            _positive(flag, value)
        _positive("batch-size", self.batch_size, allow_none=True)
        _positive("timeout", self.timeout, allow_none=True)
        _positive("store-timeout", self.store_timeout)
        workers = len(self.gpus) if self.gpus else self.workers
        if workers < 1:
            raise TunerError(f"--workers must be 1 or more, got {workers}")
        if self.patience is not None and self.patience < 0:
            raise TunerError(f"--patience must be 0 (off) or a positive number, got {self.patience}")
        if self.augment not in AUGMENT_CHOICES:
            raise TunerError(f"unknown augmentation {self.augment!r}; choose one of: {', '.join(AUGMENT_CHOICES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TunerError(f"--label-smoothing must be at least 0 and below 1, got {self.label_smoothing}")
        _known("precision", self.precision, PRECISIONS)
        _known("resize mode", self.resize, RESIZE_MODES)
        size = parse_image_size(self.image_size)
        _known("sampler", self.sampler, SAMPLERS)
        _known("pruner", self.pruner, PRUNERS)
        _known("backend", self.backend, BACKENDS)
        if self.backend == "keras-tuner" and workers > 1:
            raise TunerError("Keras Tuner keeps its search state in one process: --workers and --gpus need "
                             "--backend optuna")
        if self.backend == "keras-tuner" and (len(objectives) > 1 or max_params or self.max_latency_ms):
            raise TunerError("several objectives, --max-params and --max-latency-ms need --backend optuna "
                             "(Keras Tuner has one objective and no constraints)")
        if len(objectives) > 1 and self.sampler == "cmaes":
            raise TunerError("the cmaes sampler optimises one objective; with several use tpe (default), "
                             "nsga2, gp or random")
        if self.keep < 0:
            raise TunerError(f"--keep must be 0 or more, got {self.keep}")
        deadline = self.deadline
        if self.timeout is not None and deadline is None:
            deadline = time.time() + self.timeout
        overrides = self.overrides
        if isinstance(overrides, Mapping):
            overrides = dict(overrides)
        return dataclasses.replace(
            self, study=self.study or default_study_name(self.space, self.dataset), workers=workers,
            patience=self.patience or None, algorithm=check_algorithm(self.backend, self.algorithm),
            deadline=deadline, overrides=overrides, recycle_after=self.recycle_after or None,
            objective=",".join(objectives), max_params=max_params,
            image_size=None if size is None else f"{size[0]}x{size[1]}",
        )

    def settings(self) -> dict[str, Any]:
        """What the study records of the search as the user asked for it (``settings``)."""
        return {"trials": self.trials, "timeout": self.timeout, "sampler": self.sampler, "pruner": self.pruner,
                "seed": self.seed, "max_failures": self.max_failures, "backend": self.backend,
                "algorithm": self.algorithm, **({"limits": self.limits()} if self.limits() else {})}


def default_study_name(space: str, dataset: str) -> str:
    """``resnet-digits``; for a file or folder dataset, its name (``resnet-pets.npz``)."""
    return f"{space}-{Path(dataset).name}"


def check_algorithm(backend: str, algorithm: str | None) -> str:
    """The algorithm that chooses the values: the Optuna backend's sampler, or Keras Tuner's tuner."""
    if backend != "keras-tuner":
        if algorithm is not None and algorithm != "optuna":
            raise TunerError("--algorithm chooses a Keras Tuner tuner (with --backend keras-tuner); "
                             "the Optuna backend takes --sampler")
        return "optuna"
    algorithm = algorithm or "hyperband"
    _known("Keras Tuner algorithm", algorithm, ALGORITHMS)
    return algorithm


def _known(what: str, name: str, names: Sequence[str]) -> None:
    if name not in names:
        raise TunerError(f"unknown {what} {name!r}; choose one of: {', '.join(names)}")


def _positive(flag: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise TunerError(f"--{flag} must be a positive number, got {value}")
