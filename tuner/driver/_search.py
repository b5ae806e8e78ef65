"""``tuner.search``: check the request, prepare the job (data, space, study), hand it to a backend."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import platform
import sys
import warnings
from collections.abc import Mapping
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import optuna

from search_spaces import get_space
from search_spaces import parse_assignments
from search_spaces import resolve_overrides
from search_spaces import smallest_values
from storage import cache_path
from storage import exclusive
from storage import keras_tuner_path
from storage import open_artifact_store
from storage import open_storage
from storage import open_study
from storage import unreachable
from tuner._objectives import COST_BEFORE_TRAINING
from tuner._objectives import DIRECTIONS
from tuner._request import SearchRequest
from tuner._request import options_of
from tuner.backends import SearchJob
from tuner.backends import get_backend
from tuner.backends._base import REDUCTION_FACTOR
from tuner.backends._base import Resource
from tuner.backends._base import fail_orphans
from tuner.backends._base import to_distribution
from tuner.data import MAX_AUTO_SIDE
from tuner.data import auto_augmentation
from tuner.data import load_dataset
from tuner.data import save_arrays
from tuner.data._images import SHOWN_SKIPPED
from tuner.driver._ray import connected
from tuner.driver._ray import run_ray_round
from tuner.driver._workers import run_workers
from tuner.errors import DISTRIBUTION
from tuner.errors import StoreUnreachable
from tuner.errors import TunerError
from tuner.errors import WorkerFailed
from tuner.models._models import ModelKeeper
from tuner.training._device import accelerator
from tuner.training._device import resolve_precision
from tuner.training._progress import SearchProgress
from tuner.training._training import callers_state_kept
from tuner.training._training import keep_callers_gradients
from tuner.training._trial import TrialRunner

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
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }
    return samplers[name]()


def make_pruner(name: str, epochs: int, resource: Resource) -> optuna.pruners.BasePruner:
    """One of Optuna's pruners by short name; the resource is training images (``Resource``): the
    first rung, inside the first epoch where the data allow, to ``epochs`` epochs."""
    first = resource.first_rung
    pruners = {
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=first, max_resource=resource.at_epoch(epochs), reduction_factor=REDUCTION_FACTOR),
        "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=REDUCTION_FACTOR),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=first),
        "none": optuna.pruners.NopPruner,
    }
    return pruners[name]()


def versions() -> dict[str, str]:
    """Versions of the libraries that shape a trial's result, recorded on the study."""
    found = {"python": platform.python_version()}
    for package in (DISTRIBUTION, "keras", "keras-tuner", "optuna", "tensorflow", "jax", "torch"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


@options_of(SearchRequest)
def search(space: str = "resnet", dataset: Any = "digits", **options: Any) -> optuna.Study:
    """Search ``space`` on ``dataset`` and store every trial in the Optuna study ``study``.

    ``dataset`` is a name or path (see ``load_dataset``: image folders and CSVs take ``image_size``
    and ``resize``), or the data itself: ``(x, y)`` arrays, a ``tf.data.Dataset`` or a
    ``keras.utils.PyDataset``, written once into the cache beside the store (``save_arrays``) so that
    workers and ``tuner export`` read the same images; its study is named ``<space>-arrays``.

    Runs until the study holds ``trials`` finished (complete or pruned) trials, from every process
    working on it, or ``timeout`` seconds pass; running it again with the same ``study`` continues
    that study. The timeout is a deadline: a trial whose first epoch cannot end before it is not
    started, and the trial in flight stops in time to be tested and stored, as a COMPLETE trial of
    its best epoch with ``stopped_by="deadline"``. Under a timeout, trials explore for its first
    half, then the best configuration is trained again for the rest, its epochs planned to fill it
    (the final trial, ``role="final"``; where exploring cannot pay, the defaults are the final trial
    from the start). ``recycle_after`` runs the trials in child processes: TensorFlow keeps memory
    from every model a process built, and a fresh process is the only sure way to give it back.
    ``backend="keras-tuner"`` lets Keras Tuner's ``algorithm`` (``random``, ``bayesian``,
    ``hyperband``, ``grid``) choose the values instead of Optuna's sampler and pruner; its trials
    are written to the same study, and its own state lives in ``<db name>-keras-tuner/<study>/``.

    Every store call waits, retrying, for a database that is unreachable for up to ``store_timeout``
    seconds (a restart, a fail-over); training goes on meanwhile. Past it the search stops with
    ``StoreUnreachable``; run it again once the store is back.

    Everything the user can get wrong is checked before anything is created on disk, and raised as
    a ``TunerError`` (``SpaceError``, ``StoreError`` and ``DataError`` among them). The Keras dtype
    policy and Python's and NumPy's random states are as they were when it returns
    (``callers_state_kept``). Returns the study.
    """
    given = dataset if isinstance(dataset, (str, os.PathLike)) else None
    try:
        request = SearchRequest(space, "arrays" if given is None else str(dataset), **options).checked()
    except TypeError as err:  # an unknown keyword
        raise TunerError(f"search() {err}") from None
    if given is None:  # checked first: nothing is written for a request that is refused
        get_space(request.space)
        request = dataclasses.replace(request, dataset=str(save_arrays(dataset, cache_path(request.storage))))
    with callers_state_kept():
        return run_search(request)


def run_search(request: SearchRequest) -> optuna.Study:
    """The search's own process: connect to Ray for ``--ray`` (first: a cluster out of reach stops
    the search before its store is written), prepare the job, record the study's settings once, then
    run the trials here or in worker processes (``run_workers``, each running ``run_in_worker``)."""
    with connected(request.ray):
        return _run_search(request)


def _run_search(request: SearchRequest) -> optuna.Study:
    job = prepare(request, seed=request.seed, creating=True)
    job.study.set_user_attr("settings", {**job.recipe, **request.settings()})
    job.study.set_user_attr("versions", versions())
    keep_callers_gradients()  # a library caller's own TensorFlow graphs outlive our trials
    # A trial whose process died on this machine (kill -9, out of memory) is failed now and its
    # parameters retried once, rather than after the heartbeat's grace period.
    fail_orphans(job.study, job.progress)
    if request.workers > 1 or request.recycle_after or request.ray is not None:
        size = job.runner.data.files.get("image_size")
        if size:  # the size chosen from the data, as this process chose it
            request = dataclasses.replace(request, image_size=f"{size[0]}x{size[1]}")
        began = datetime.datetime.now()
        try:
            run_workers(run_in_worker, request, lambda: job.spent(since=began), job.stored_trials,
                        run_round=None if request.ray is None else run_ray_round)
        except WorkerFailed:  # a crashed worker's trial in flight is failed at once
            fail_orphans(job.study, job.progress)
            raise
        except StoreUnreachable:  # a worker gave up waiting for the store: say it once, from here
            raise unreachable(request.storage, request.store_timeout) from None
    else:
        with job.progress:
            get_backend(request.backend).run(job)
    fail_orphans(job.study, job.progress)  # a worker that crashed
    if job.keeper is not None:  # workers that finished together may each have kept one model too many
        job.keeper.trim(job.study)
    return job.study


def run_in_worker(request: SearchRequest, seed: int, process_trials: int | None, lines: bool) -> None:
    """A worker process's part: trials with its own sampler ``seed``, at most ``process_trials`` of
    them; ``lines``: plain progress lines (one live view per terminal, not one per worker)."""
    if lines and request.progress:
        request = dataclasses.replace(request, progress="lines")
    job = prepare(request, seed=seed, process_trials=process_trials)
    with job.progress:
        get_backend(request.backend).run(job)


def prepare(request: SearchRequest, *, seed: int, process_trials: int | None = None,
            creating: bool = False) -> SearchJob:
    """Turn a checked request into what a backend runs: the space narrowed by the overrides, the
    data, the recipe, the trial runner, and the study with its sampler (seeded with ``seed``) and pruner.

    What can be refused is checked before the store is opened or created, and the store before the
    artifact folder. ``creating`` (the search's own process, not a worker) also names the study's
    objective and records the data's pixel statistics.
    """
    assert request.study is not None and request.algorithm is not None, "a checked() request"
    policy = resolve_precision(request.precision)
    space_cls = get_space(request.space)
    overrides = request.overrides
    raw = dict(overrides) if isinstance(overrides, Mapping) else parse_assignments(overrides or [])
    narrowed = resolve_overrides(space_cls.hyperparameters(), raw)
    # The data before the store: a missing dataset must leave no new file behind.
    data = load_dataset(request.dataset, image_size=request.image_size, resize=request.resize,
                        cache_dir=cache_path(request.storage), max_side=MAX_AUTO_SIDE[accelerator()],
                        progress=bool(request.progress) and creating)
    if creating and data.files.get("skipped_files"):
        skipped = data.files["skipped_files"]
        shown = ", ".join(skipped[:SHOWN_SKIPPED]) + (", ..." if len(skipped) > SHOWN_SKIPPED else "")
        print(f"skipped {len(skipped)} unreadable image(s) (all named in the study's skipped_files): {shown}",
              file=sys.stderr)
    store = open_storage(request.storage, heartbeat=True, patience=request.store_timeout)
    mean, variance = data.pixel_stats()
    augment = request.augment
    if augment == "auto":
        augment = auto_augmentation(data.name, len(data.y_train), request.epochs)
    # Several sizes to choose from: the automatic one where it is among them (the defaults' first trial).
    choices = request.batch_choices()
    automatic = auto_batch_size(len(data.y_train), accelerator())
    batch_size = (request.batch_size if isinstance(request.batch_size, int)
                  else automatic if not choices or automatic in choices else choices[0])
    steps_per_epoch = math.ceil(len(data.y_train) / batch_size)
    hypermodel = space_cls(data.input_shape, data.classes, mean=mean, variance=variance, augment=augment,
                           train_steps=request.epochs * steps_per_epoch,
                           label_smoothing=request.label_smoothing)
    specs = [narrowed.get(spec.name, spec) for spec in space_cls.hyperparameters()]  # as this search draws them
    study = open_study(
        store,
        request.study,
        direction=[DIRECTIONS[name] for name in request.objectives],
        attrs=study_attrs(request.space, request.backend, ",".join(request.objectives), raw, data.describe(),
                          request.algorithm),
        sampler=make_sampler(request.sampler, seed),
        # A multi-objective study prunes by its own rule (backends/_optuna.py: prune_multi_objective).
        pruner=make_pruner("none" if request.multi_objective else request.pruner, request.epochs,
                           Resource(len(data.y_train), batch_size)),
        first_trials=(first_trials(request, specs, batch_size)
                      if request.start_from_defaults and request.backend == "optuna" else ()),
    )
    check_space_unchanged(study, specs)
    keeper = None
    if request.keep:  # the artifact folder only for a study that may run
        keeper = ModelKeeper(open_artifact_store(request.storage, request.artifacts, create=True), request.keep,
                             functools.partial(exclusive, request.storage))
    if creating:
        if study.metric_names is None:  # optuna-dashboard then plots "val_accuracy", not "Objective 0"
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(request.objectives))
        study.set_user_attr("pixel_mean", mean)  # to rebuild a model from its parameters
        study.set_user_attr("pixel_variance", variance)
    budget = request.time_budget
    progress = SearchProgress(
        enabled=bool(request.progress), objective=",".join(request.objectives), epochs=request.epochs,
        live=False if request.progress == "lines" else None, started=budget.start, deadline=budget.end,
    )
    recipe = {"batch_size": batch_size, "augment": augment, "precision": policy,
              "patience": request.patience, "max_epochs": request.epochs,
              "label_smoothing": request.label_smoothing}
    runner = TrialRunner(hypermodel, data, batch_size, request.curve_objective, precision=policy,
                         patience=request.patience, deadline=budget.end, progress=progress)
    return SearchJob(
        request=request, study=study, storage=store, runner=runner, progress=progress, overrides=narrowed,
        recipe=recipe, seed=seed, keeper=keeper, process_trials=process_trials,
        alternatives=alternative_trials(request, hypermodel.alternatives(), specs, batch_size),
        workdir=str(keras_tuner_path(request.storage)) if request.backend == "keras-tuner" else None,
    )


def first_trials(request: SearchRequest, specs: Sequence[Any], batch_size: int | None = None) -> list[dict[str, Any]]:
    """What a new study tries first: the space's defaults (a paper recipe, a known-good baseline); and
    in a Pareto search with a cost objective or under ``--max-params``, also its smallest model
    (``smallest_values``), so the front has its cheap end from the start instead of after the
    sampler's random start-up trials, and a budget that the defaults exceed trains a model at once.
    Where the batch size is a hyperparameter, they train at ``batch_size``."""
    defaults = {spec.name: spec.default for spec in specs}
    smallest = smallest_values(specs)
    costly = any(name in COST_BEFORE_TRAINING for name in request.objectives) or request.max_params
    chosen = [defaults, smallest] if costly and smallest != defaults else [defaults]
    return [{**values, "batch_size": batch_size} for values in chosen] if request.batch_choices() else chosen


def alternative_trials(request: SearchRequest, alternatives: Sequence[Mapping[str, Any]], specs: Sequence[Any],
                       batch_size: int | None = None) -> tuple[dict[str, Any], ...]:
    """The space's known-good ``alternatives`` to its defaults for this data (``TunableSpace.alternatives``), each
    as a whole configuration, those that ``--set`` leaves drawable; none where the search does not
    start from the defaults, or seeks a Pareto front (which starts from the smallest model)."""
    if request.multi_objective or not request.start_from_defaults or request.backend != "optuna":
        return ()
    by_name = {spec.name: spec for spec in specs}
    defaults = {spec.name: spec.default for spec in specs}
    chosen: list[dict[str, Any]] = []
    for changes in alternatives:
        values = {**defaults, **changes}
        if (all(name in by_name and by_name[name].allows(value) for name, value in changes.items())
                and values != defaults and values not in chosen):
            chosen.append(values)
    return tuple({**values, "batch_size": batch_size} if request.batch_choices() else values for values in chosen)


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
