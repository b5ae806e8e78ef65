"""``tuner.search``: check the request, load the data, open the study, hand it to a backend."""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Mapping
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

from tuner._names import ALGORITHMS
from tuner._names import AUGMENT_CHOICES
from tuner._names import OBJECTIVES
from tuner._names import PRUNERS
from tuner._names import SAMPLERS
from tuner.errors import TunerError

# The automatic batch size (auto_batch_size): a power of two from MIN_AUTO_BATCH to the device's
# maximum, and the steps an epoch must at least have.
MIN_AUTO_BATCH, MIN_STEPS_PER_EPOCH = 16, 64
MAX_AUTO_BATCH = {"cpu": 64, "gpu": 128}


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """One of Optuna's samplers by short name, seeded."""
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed),
    }
    if name not in samplers:
        raise TunerError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return samplers[name]()


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """One of Optuna's pruners by short name; epochs are the resource (one report per epoch)."""
    pruners = {
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                                            reduction_factor=3),
        "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        "none": optuna.pruners.NopPruner,
    }
    if name not in pruners:
        raise TunerError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")
    return pruners[name]()


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a trial's result, recorded on the study."""
    found = {"python": platform.python_version()}
    for package in ("tuner", "keras", "keras-tuner", "optuna", "tensorflow", "jax", "torch"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def default_study_name(space: str, dataset: str) -> str:
    """``resnet-digits``; for a file or folder dataset, its name (``resnet-pets.npz``)."""
    return f"{space}-{Path(dataset).name}"


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise TunerError(f"--{name} must be a positive number, got {value}")


def search(
    space: str = "resnet",
    dataset: str = "digits",
    *,
    trials: int = 10,
    epochs: int = 10,
    timeout: float | None = None,
    study: str | None = None,
    storage: str | None = None,
    sampler: str = "tpe",
    pruner: str = "hyperband",
    seed: int = 0,
    overrides: Mapping[str, str] | Sequence[str] | None = None,
    objective: str = "val_accuracy",
    batch_size: int | None = None,
    patience: int | None = 5,
    augment: str = "auto",
    label_smoothing: float = 0.0,
    precision: str = "auto",
    backend: str = "optuna",
    algorithm: str | None = None,
    max_failures: int = 5,
    process_trials: int | None = None,
    keep: int = 3,
    artifacts: str | None = None,
    start_from_defaults: bool = True,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    recycle_after: int | None = None,
    progress: bool | str = False,
    deadline: float | None = None,
    record_settings: bool = True,
) -> optuna.Study:
    """Search ``space`` on ``dataset`` and store every trial in the Optuna study ``study``.

    Runs until the study holds ``trials`` finished (complete or pruned) trials, from every process
    working on it, or ``timeout`` seconds pass; running it again with the same ``study`` continues
    that study. The timeout is a deadline: a trial whose first epoch cannot end before it is not
    started, and the trial in flight stops in time to be tested and stored, as a COMPLETE trial of
    its best epoch with ``stopped_by="deadline"`` (``deadline`` is that moment as a ``time.time()``,
    for worker processes; by default ``timeout`` seconds from this call). ``pruner`` stops unpromising trials after any epoch; ``patience`` stops a trial whose
    objective has not improved for that many epochs (None or 0: never). ``augment`` is ``auto`` (flips
    except for digits and MNIST, shifts for small data or long trials: ``auto_augmentation``),
    ``none``, ``flip``, ``shift`` or ``flip_shift``;
    ``precision`` is ``auto`` (mixed_float16 on a GPU), ``float32``, ``mixed_float16`` or
    ``mixed_bfloat16``. ``label_smoothing`` (0 to 1, default 0) smooths the training targets.
    The models of the best ``keep`` complete trials are stored in the artifact
    folder ``artifacts`` (default: ``<db name>-artifacts`` beside a SQLite store).
    ``batch_size`` defaults to ``auto_batch_size`` of the training split (16 for digits; 64 for
    CIFAR-10 on a CPU, 128 on a GPU). ``progress`` prints the search's progress to stderr: True
    adds a live view on a terminal (``SearchProgress``), ``"lines"`` never does. ``overrides`` fix or narrow hyperparameters, as ``{"depth": "20"}`` or ``["depth=20"]``.
    Everything the user can get wrong is checked before the first trial and raised as a
    ``TunerError``, ``SpaceError`` or ``StoreError``. ``workers`` > 1 runs that many processes on
    the study (``gpus``: one per listed GPU, each seeing only its own). ``recycle_after`` runs the
    trials in child processes that each exit after that many trials: TensorFlow keeps memory from
    every model a process built, and a fresh process is the only sure way to give it back.
    ``process_trials`` caps the trials this process runs (used by those children). A new study's
    first trial is the space's defaults (within ``overrides``) unless ``start_from_defaults`` is
    False. ``backend="keras-tuner"`` lets Keras Tuner's ``algorithm`` (``random``, ``bayesian``,
    ``hyperband``, ``grid``) choose the values instead of Optuna's sampler and pruner; its trials are
    written to the same study, and its own state lives in ``<db name>-keras-tuner/<study>/``.
    ``record_settings`` writes the run's settings and package versions on the study (False in the
    worker processes a search starts: the settings stay those the user gave). Returns the study.
    """
    if timeout is not None and deadline is None:
        deadline = time.time() + timeout
    request = dict(locals())  # the arguments, for worker processes
    from search_spaces import get_space
    from search_spaces import parse_assignments
    from search_spaces import resolve_overrides
    from storage import artifacts_path
    from storage import fail_orphaned_trials
    from storage import keras_tuner_path
    from storage import open_artifact_store
    from storage import open_storage
    from storage import open_study
    from tuner._progress import SearchProgress
    from tuner._device import accelerator
    from tuner._device import resolve_precision
    from tuner._models import ModelKeeper
    from tuner._training import DIRECTIONS
    from tuner._training import keep_callers_gradients
    from tuner.backends import SearchJob
    from tuner.backends import get_backend
    from tuner.data import auto_augmentation
    from tuner.data import load_dataset

    if objective not in DIRECTIONS:
        raise TunerError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    for name, value in (("trials", trials), ("epochs", epochs)):
        _positive(name, value)
    _positive("batch-size", batch_size, allow_none=True)
    _positive("timeout", timeout, allow_none=True)
    if gpus:
        workers = len(gpus)
    if workers < 1:
        raise TunerError(f"--workers must be 1 or more, got {workers}")
    if patience is not None and patience < 0:
        raise TunerError(f"--patience must be 0 (off) or a positive number, got {patience}")
    patience = patience or None
    if augment not in AUGMENT_CHOICES:
        raise TunerError(f"unknown augmentation {augment!r}; choose one of: {', '.join(AUGMENT_CHOICES)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise TunerError(f"--label-smoothing must be at least 0 and below 1, got {label_smoothing}")
    policy = resolve_precision(precision)
    chosen_pruner = make_pruner(pruner, epochs)
    space_cls = get_space(space)
    raw = parse_assignments(overrides) if isinstance(overrides, (list, tuple)) else dict(overrides or {})
    narrowed = resolve_overrides(space_cls.hyperparameters(), raw)
    engine = get_backend(backend)
    algorithm = check_algorithm(backend, algorithm)
    if backend == "keras-tuner" and workers > 1:
        raise TunerError("Keras Tuner keeps its search state in one process: --workers and --gpus need "
                         "--backend optuna")
    chosen_sampler = make_sampler(sampler, seed)
    if keep < 0:
        raise TunerError(f"--keep must be 0 or more, got {keep}")
    data = load_dataset(dataset)  # before the store: a missing dataset must leave no new file behind
    store = open_storage(storage, heartbeat=True)
    keeper = None
    if keep:
        keeper = ModelKeeper(open_artifact_store(artifacts_path(storage, artifacts), create=True), keep)
    mean, variance = data.pixel_stats()
    augmentation = auto_augmentation(data.name, len(data.y_train), epochs) if augment == "auto" else augment
    batch_size = batch_size or auto_batch_size(len(data.y_train), accelerator())
    steps_per_epoch = math.ceil(len(data.y_train) / batch_size)
    hypermodel = space_cls(data.input_shape, data.classes, mean=mean, variance=variance,
                           augment=augmentation, train_steps=epochs * steps_per_epoch,
                           label_smoothing=label_smoothing)
    name = study or default_study_name(space, dataset)
    specs = [narrowed.get(spec.name, spec) for spec in space_cls.hyperparameters()]  # as this search draws them
    study_obj = open_study(
        store,
        name,
        direction=DIRECTIONS[objective],
        attrs=study_attrs(space, backend, objective, raw, data.describe(), algorithm),
        sampler=chosen_sampler,
        pruner=chosen_pruner,
        # A new study first tries the space's defaults (a paper recipe): a known-good baseline.
        first_trial={spec.name: spec.default for spec in specs}
        if start_from_defaults and backend == "optuna" else None,
    )
    check_space_unchanged(study_obj, specs)
    if study_obj.metric_names is None:  # optuna-dashboard then plots "val_accuracy", not "Objective 0"
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study_obj.set_metric_names([objective])
    recipe = {"batch_size": batch_size, "augment": augmentation, "precision": policy,
              "patience": patience, "max_epochs": epochs, "label_smoothing": label_smoothing}
    if record_settings:  # a worker's parent has recorded them, with the seed and timeout the user gave
        study_obj.set_user_attr("settings", {
            **recipe, "trials": trials, "timeout": timeout, "sampler": sampler, "pruner": pruner,
            "seed": seed, "max_failures": max_failures, "backend": backend, "algorithm": algorithm,
        })
        study_obj.set_user_attr("versions", versions())
        study_obj.set_user_attr("pixel_mean", mean)  # to rebuild a model from its parameters
        study_obj.set_user_attr("pixel_variance", variance)
    job = SearchJob(
        study=study_obj, storage=store, hypermodel=hypermodel, data=data, overrides=narrowed, objective=objective,
        trials=trials, epochs=epochs, batch_size=batch_size, deadline=deadline, seed=seed,
        max_failures=max_failures, patience=patience, precision=policy, recipe=recipe, keeper=keeper,
        process_trials=process_trials, algorithm=algorithm,
        workdir=str(keras_tuner_path(storage)) if backend == "keras-tuner" else None,
        progress=SearchProgress(enabled=bool(progress), objective=objective, epochs=epochs,
                                live=False if progress == "lines" else None,
                                started=None if deadline is None or timeout is None else deadline - timeout,
                                deadline=deadline),
    )
    keep_callers_gradients()  # a library caller's own TensorFlow graphs outlive our trials
    # A trial whose process died on this machine (kill -9, out of memory) is failed now and its
    # parameters retried once, rather than after the heartbeat's grace period.
    for number in fail_orphaned_trials(study_obj):
        job.progress.print(f"trial {number} FAIL  its process on this machine no longer runs (retried once)")
    if workers > 1 or recycle_after:
        from tuner._workers import run_workers

        run_workers(search, request, workers, gpus, recycle_after=recycle_after, job=job)
    else:
        with job.progress:
            engine.run(job)
    for number in fail_orphaned_trials(study_obj):  # a worker that crashed
        job.progress.print(f"trial {number} FAIL  its worker process died")
    if keeper is not None:  # workers that finished together may each have kept one model too many
        keeper.trim(study_obj)
    return study_obj


def auto_batch_size(train_images: int, device: str = "cpu") -> int:
    """The default batch size: the largest power of two from 16 to ``MAX_AUTO_BATCH[device]`` (64 on a
    CPU, 128 on a GPU) that leaves an epoch at least ``MIN_STEPS_PER_EPOCH`` optimizer steps.

    Large datasets get large batches, which keep an accelerator busy (128, as in the ResNet paper);
    a CPU runs batch 64 about as fast per image, and twice the updates learn more in a short budget
    (Fashion-MNIST, the defaults trial's first epoch: 0.878 validation accuracy at 64, 0.857 at 128,
    in the same time). Small datasets get enough updates per epoch to learn in the few epochs a trial
    has (16 for digits: 72 steps an epoch). On digits the defaults trial first reached 0.97
    validation accuracy after 3-5 epochs at batch 16, and after none of 10 at batch 32 (seeds 0-2).
    """
    size = MAX_AUTO_BATCH[device]
    while size > MIN_AUTO_BATCH and train_images / size < MIN_STEPS_PER_EPOCH:
        size //= 2
    return size


def check_space_unchanged(study: optuna.Study, specs: Sequence[Any]) -> None:
    """Refuse to continue a study whose trials drew a hyperparameter from another range or choice set
    (a study made by an older version of the space): Optuna would fail every new trial."""
    from tuner.backends._base import to_distribution

    current = {spec.name: to_distribution(spec) for spec in specs}
    seen: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        for name, stored in trial.distributions.items():
            if name in seen or name not in current:
                continue
            seen.add(name)
            try:
                optuna.distributions.check_distribution_compatibility(stored, current[name])
            except ValueError:
                raise TunerError(
                    f"study {study.study_name!r} drew {name} from {_describe(stored)}, this version of "
                    f"the space from {_describe(current[name])}; continue it with the version that made "
                    "it, or use another --study name"
                ) from None


def _describe(distribution: Any) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return "{" + ", ".join(str(c) for c in distribution.choices) + "}"
    return f"{distribution.low}..{distribution.high}{' log' if distribution.log else ''}"


def check_algorithm(backend: str, algorithm: str | None) -> str:
    """The algorithm that chooses the values: the Optuna backend's sampler, or Keras Tuner's tuner."""
    if backend != "keras-tuner":
        if algorithm is not None:
            raise TunerError("--algorithm chooses a Keras Tuner tuner (with --backend keras-tuner); "
                             "the Optuna backend takes --sampler")
        return "optuna"
    algorithm = algorithm or "hyperband"
    if algorithm not in ALGORITHMS:
        raise TunerError(f"unknown Keras Tuner algorithm {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
    return algorithm


def study_attrs(
    space: str, backend: str, objective: str, overrides: Mapping[str, str], data: Mapping[str, Any],
    algorithm: str = "optuna",
) -> dict[str, Any]:
    """The study's identity (checked when it is continued) and what it ran on.

    A Keras Tuner study also records its ``algorithm``, which cannot change: Keras Tuner resumes
    its own oracle. (An Optuna study may switch samplers between runs.)
    """
    import keras

    chosen = {"algorithm": algorithm} if backend == "keras-tuner" else {}
    return {
        "space": space,
        "backend": backend,
        **chosen,
        "objective": objective,
        "overrides": dict(sorted(overrides.items())),
        **data,
        "keras_backend": keras.backend.backend(),
    }
