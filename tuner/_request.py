"""What a user asks a search for: one serialisable request, checked before anything runs.

Each option is declared once, as a field of ``SearchRequest`` (``option``: default, help, flag),
from which ``tuner search``'s flags, ``tuner.search``'s signature (``options_of``) and its
documentation are made. ``tuner.search(...)`` and ``tuner search`` build a ``SearchRequest``;
``checked()`` refuses every mistake that needs no data, store or framework (names, numbers,
combinations) and fills in what follows from the rest (the study's name, the deadline, the Keras
Tuner algorithm). Worker processes receive the checked request itself, so every process runs the
search the user asked for.

The backends (a ``SearchJob`` holds the request) and the search (``tuner.driver``) both read it, so it
sits below both, beside ``_names`` and ``_objectives``, not inside ``tuner.driver``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import ParamSpec
from typing import TypeVar

from search_spaces import AUGMENTATION_HELP
from search_spaces import transforms_of
from storage import object_store
from tuner._names import ALGORITHMS
from tuner._names import BACKENDS
from tuner._names import OBJECTIVES
from tuner._names import PRECISIONS
from tuner._names import PRUNERS
from tuner._names import RESIZE_MODES
from tuner._names import SAMPLER_NEEDS
from tuner._names import SAMPLERS
from tuner._objectives import curve_objective
from tuner._objectives import parse_count
from tuner._objectives import parse_objectives
from tuner.data._images import parse_image_size
from tuner.errors import STORE_TIMEOUT
from tuner.errors import TunerError
from tuner.errors import install_hint

P = ParamSpec("P")
R = TypeVar("R")


# Of a --timeout, the share kept for the final trial: exploring stops when that much is left.
COMMIT_SHARE = 0.5


@dataclass(frozen=True)
class TimeBudget:
    """A search's wall-clock budget, the one place its deadline lives (``SearchRequest.time_budget``),
    passed down to what needs it; ``time.time()`` values. ``start``: when the search began counting
    (None where only a deadline was given); ``end``: when it ends, the trial in flight included (None:
    no deadline); ``explore_end``: when exploring ends and the final trial starts, ``COMMIT_SHARE`` of
    the timeout before the end (the end itself for a bare deadline or a Pareto search, which has no
    one best to train)."""

    start: float | None = None
    end: float | None = None
    explore_end: float | None = None

    def left(self) -> float:
        """Seconds to the end (infinite without a deadline; 0 once it has passed)."""
        return math.inf if self.end is None else max(self.end - time.time(), 0.0)

    def passed(self) -> bool:
        """Whether the deadline has passed."""
        return self.end is not None and time.time() >= self.end


def option(default: Any, help: str, **flag: Any) -> Any:
    """A field of ``SearchRequest``, declared once: its default, what it means (``help``: the flag's
    help, the reference's text, ``tuner.search``'s documentation) and how ``tuner search`` spells it:
    ``argparse``'s ``add_argument`` keywords (``type``, ``choices``, ``metavar``, ``action``),
    ``cli_default`` where the command's default differs, and ``flag`` where its name is not
    ``--field-name``."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def internal(default: Any, help: str) -> Any:
    """A field of ``SearchRequest`` that ``tuner search`` sets itself: no flag."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": None})


def _gpu_list(text: str) -> list[str]:
    return [gpu.strip() for gpu in text.split(",") if gpu.strip()]


def batch_sizes(text: str) -> int | list[int]:
    """``--batch-size``'s value: one size (``64``), or several for the search to choose from (``32,64``)."""
    sizes = [int(part) for part in text.split(",")]  # a ValueError is argparse's "invalid value"
    return sizes[0] if len(sizes) == 1 else sizes


@dataclass(frozen=True)
class SearchRequest:
    """What a search is asked for: the options of ``tuner.search`` and ``tuner search``, each declared
    here once (``option``), from which the command's flags, ``tuner.search``'s signature and its
    documentation are made."""

    space: str = option("resnet", "search space: resnet, densenet (see `tuner spaces`)")
    dataset: Any = option(
        "digits", "digits, cifar10, cifar100, mnist, fashion_mnist, a .npz file, an image folder "
        "(<class>/<image> or {train,val,test}/<class>/<image>) or a .csv of path,label; for "
        "tuner.search also (x, y) arrays, a tf.data.Dataset or a keras.utils.PyDataset")
    image_size: int | str | Sequence[int] | None = option(
        None, "image files are resized to this (default: their median size, at most 128 px on a CPU and "
        "224 px on a GPU), keeping their aspect ratio", metavar="N|HxW")
    resize: str = option("crop", "fit images of another aspect ratio by a centre crop (default) or by padding",
                         choices=RESIZE_MODES)
    trials: int = option(10, "finished (complete or pruned) trials the study should hold, across runs and "
                         "processes (default 10)", type=int, metavar="N")
    timeout: float | None = option(
        None, "end the search after this many seconds: trials explore for the first half, then the best "
        "configuration is trained for the rest (the final trial); the trial in flight stops in time and keeps its "
        "best epoch", type=float, metavar="SECONDS")
    epochs: int = option(10, "epochs per trial, whose value is its best epoch's (default 10); under --timeout "
                         "the final trial trains as many as fill the time left", type=int, metavar="N")
    batch_size: int | Sequence[int] | None = option(
        None, "training batch size (default: the largest of 16..64 on a CPU, 16..128 on a GPU, that leaves "
        "64 steps an epoch); several (32,64,128) make it a hyperparameter, batch_size, that the search tunes",
        type=batch_sizes, metavar="N[,N...]")
    study: str | None = option(None, "study name (default SPACE-DATASET); reuse it to continue", metavar="NAME")
    storage: str | None = option(
        None, "SQLAlchemy URL of the store (default: $TUNER_STORAGE or sqlite:///tuner.db)", metavar="URL")
    backend: str = option("optuna", "search engine: optuna (default) or keras-tuner (Keras Tuner's tuners)",
                          choices=BACKENDS)
    algorithm: str | None = option(None, "Keras Tuner's tuner with --backend keras-tuner (default hyperband)",
                                   choices=ALGORITHMS)
    sampler: str = option("tpe", "Optuna sampler (default tpe)", choices=SAMPLERS)
    pruner: str = option("hyperband", "Optuna pruner that stops unpromising trials, inside the first epoch on "
                         "large data (default hyperband); a multi-objective study uses tuner's own rule unless none",
                         choices=PRUNERS)
    patience: int | None = option(
        5, "stop a trial after this many epochs without improvement at a learning rate that did not fall "
        "(a cosine schedule runs to its end; default 5; 0: off)", type=int, metavar="N")
    augment: str = option(
        "auto", "training augmentation (default auto: flips except for digits/mnist, plus shifts for under "
        f"20,000 training images or 30+ epochs), {AUGMENTATION_HELP}", metavar="NAME")
    label_smoothing: float = option(
        0.0, "label smoothing of the training loss, in [0, 1) (default 0: none; 0.1 is common)",
        type=float, metavar="EPS")
    precision: str = option(
        "auto", "float32 or mixed precision (default auto: mixed_float16 on a GPU, float32 on a CPU)",
        choices=PRECISIONS)
    seed: int = option(0, "seeds the sampler and each trial's weights: trial k uses seed+k (default 0)",
                       type=int, metavar="N")
    overrides: Mapping[str, str] | Sequence[str] | None = option(
        None, "fix (v), narrow (a..b) or subset (a,b) a hyperparameter: depth=20, learning_rate=1e-3..1e-1, "
        "optimizer=adam,sgd; repeatable",
        flag="--set", action="append", cli_default=[], metavar="NAME=VALUE")
    objective: str | Sequence[str] = option(
        "val_accuracy", f"what to optimise (default val_accuracy): one of {', '.join(OBJECTIVES)}, or two or "
        "three of them, comma-separated, for a Pareto front (val_accuracy,param_count)", metavar="NAME[,NAME...]")
    max_params: int | str | None = option(
        None, "train no model over N parameters (250000, 250k, 1.5M): such configurations are rejected "
        "before training, and the best trial is the best within the budget", metavar="N")
    max_latency_ms: float | None = option(
        None, "a trial whose batch-1 inference takes over MS milliseconds on this machine is infeasible: it "
        "keeps no model and is never the best", type=float, metavar="MS")
    keep: int = option(3, "store the models of the best N complete trials (default 3; 0: none)", type=int,
                       metavar="N")
    artifacts: str | None = option(
        None, "where stored models live: a folder, or object storage as s3://BUCKET/PREFIX or gs://BUCKET/PREFIX "
        "(default: <db name>-artifacts beside a SQLite store)", metavar="DIR|URL")
    start_from_defaults: bool = option(
        True, "a new study's first trial is the space's defaults (within --set), and under --max-params its "
        "smallest model next", action=argparse.BooleanOptionalAction)
    workers: int = option(1, "worker processes on this machine, sharing the study (default 1)", type=int,
                          metavar="N")
    gpus: Sequence[str] | None = option(None, "one worker per listed GPU id (0,1,2,3), each seeing only its own",
                                        type=_gpu_list, metavar="0,1,...")
    ray: str | None = option(
        None, "run the workers as Ray tasks, placed by Ray: on the cluster at ADDRESS (auto: the one running "
        "here), or with --ray alone on a Ray runtime of this machine's own (needs the ray extra)",
        nargs="?", const="local", metavar="ADDRESS")
    gpus_per_trial: float | None = option(
        None, "with --ray, the share of a GPU each worker takes (default 1 on a cluster with GPUs; 0.5 packs two "
        "trials on a GPU)", type=float,
        metavar="F")
    recycle_after: int | None = option(
        None, "run trials in worker processes that exit after N trials, which returns the memory "
        "TensorFlow keeps from every model it built (default 10 for the command, none for tuner.search; "
        "0: all in this process)", type=int, cli_default=10, metavar="N")
    store_timeout: float = option(
        STORE_TIMEOUT, "how long to wait, retrying, for an unreachable store (a database restart or "
        f"fail-over) before the search stops with exit code 3 (default {STORE_TIMEOUT:.0f})",
        type=float, metavar="S")
    max_failures: int = option(5, "stop after this many failed trials in a row (default 5; 0 never stops)",
                               type=int, metavar="N")
    progress: bool | str = option(
        False, "no progress output (tuner.search: progress=True prints it to stderr, a live view on a "
        "terminal; \"lines\" as plain lines; default none)", flag="--quiet", action="store_false", cli_default=True)
    deadline: float | None = internal(
        None, "the moment the search ends, as a time.time() (default: timeout seconds from the call; the "
        "command counts from its own start)")

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

    @property
    def time_budget(self) -> TimeBudget:
        """The search's wall-clock budget, from its ``deadline`` and ``timeout`` (``checked`` sets the
        deadline: ``timeout`` seconds from then)."""
        end = self.deadline
        if end is None:
            return TimeBudget()
        start = end - self.timeout if self.timeout else None
        explore_end = end if start is None or self.multi_objective else end - COMMIT_SHARE * (end - start)
        return TimeBudget(start, end, explore_end)

    def batch_choices(self) -> tuple[int, ...]:
        """The batch sizes the search chooses from (``batch_size`` a hyperparameter; ``checked`` makes
        several sizes a sorted tuple, one an int); () for one size or the automatic one."""
        return self.batch_size if isinstance(self.batch_size, tuple) else ()

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
        given = self.batch_size
        sizes = [] if given is None else [given] if isinstance(given, int) else sorted(set(given))
        for batch in sizes:
            _positive("batch-size", batch)
        if len(sizes) > 1 and self.backend != "optuna":
            raise TunerError("several --batch-size values are a hyperparameter of --backend optuna only")
        _positive("timeout", self.timeout, allow_none=True)
        _positive("store-timeout", self.store_timeout)
        workers = len(self.gpus) if self.gpus else self.workers
        if workers < 1:
            raise TunerError(f"--workers must be 1 or more, got {workers}")
        if self.patience is not None and self.patience < 0:
            raise TunerError(f"--patience must be 0 (off) or a positive number, got {self.patience}")
        if self.augment != "auto":
            transforms_of(self.augment)  # refuses an unknown name
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TunerError(f"--label-smoothing must be at least 0 and below 1, got {self.label_smoothing}")
        _known("precision", self.precision, PRECISIONS)
        _known("resize mode", self.resize, RESIZE_MODES)
        size = parse_image_size(self.image_size)
        _known("sampler", self.sampler, SAMPLERS)
        if self.sampler in SAMPLER_NEEDS and importlib.util.find_spec(SAMPLER_NEEDS[self.sampler][0]) is None:
            module, extra = SAMPLER_NEEDS[self.sampler]
            raise TunerError(f"--sampler {self.sampler} needs {module}, which is not installed: {install_hint(extra)}")
        _known("pruner", self.pruner, PRUNERS)
        _known("backend", self.backend, BACKENDS)
        if self.ray is not None:
            if self.gpus:
                raise TunerError("with --ray, Ray places the workers on GPUs: give --gpus-per-trial instead of --gpus")
            if importlib.util.find_spec("ray") is None:
                raise TunerError(f"--ray needs Ray, which is not installed: {install_hint('ray')}")
        elif self.gpus_per_trial is not None:
            raise TunerError("--gpus-per-trial places workers with --ray; without Ray, give --gpus 0,1,...")
        _positive("gpus-per-trial", self.gpus_per_trial, allow_none=True)
        if self.backend == "keras-tuner" and (workers > 1 or self.ray is not None):
            raise TunerError("Keras Tuner keeps its search state in one process: --workers, --gpus and --ray "
                             "need --backend optuna")
        if self.backend == "keras-tuner" and (len(objectives) > 1 or max_params or self.max_latency_ms):
            raise TunerError("several objectives, --max-params and --max-latency-ms need --backend optuna "
                             "(Keras Tuner has one objective and no constraints)")
        if len(objectives) > 1 and self.sampler == "cmaes":
            raise TunerError("the cmaes sampler optimises one objective; with several use tpe (default), "
                             "nsga2, gp or random")
        if self.keep < 0:
            raise TunerError(f"--keep must be 0 or more, got {self.keep}")
        object_store(self.artifacts)  # a bucket URL names its bucket, and its client is installed
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
            batch_size=tuple(sizes) if len(sizes) > 1 else next(iter(sizes), None),
        )

    def settings(self) -> dict[str, Any]:
        """What the study records of the search as the user asked for it (``settings``)."""
        return {"trials": self.trials, "timeout": self.timeout, "sampler": self.sampler, "pruner": self.pruner,
                "seed": self.seed, "max_failures": self.max_failures, "backend": self.backend,
                "algorithm": self.algorithm, **({"limits": self.limits()} if self.limits() else {})}


def options_doc() -> str:
    """The options of ``SearchRequest`` as a docstring section, each with its default and help."""
    lines = ["Options (the fields of ``SearchRequest``, keywords):", ""]
    for f in dataclasses.fields(SearchRequest)[2:]:  # space and dataset are positional too
        lines.append(f"- ``{f.name}={f.default!r}``: {f.metadata['help']}")
    return "\n".join(lines)


def options_of(cls: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Gives the decorated function the parameters of ``cls`` (``SearchRequest``): its signature as
    ``help()``, editors and type checkers show it, and ``options_doc`` after its docstring."""

    def decorate(func: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(func).return_annotation
        func.__signature__ = inspect.signature(cls).replace(return_annotation=returns)  # type: ignore[attr-defined]
        func.__doc__ = f"{inspect.cleandoc(func.__doc__ or '')}\n\n{options_doc()}"
        return func

    return decorate


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
