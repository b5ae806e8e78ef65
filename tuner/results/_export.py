"""``tuner.export``: the best (or a chosen) trial's model as a file plain Keras loads."""

from __future__ import annotations

import math
from typing import Any

from tuner._objectives import curve_objective
from tuner._objectives import parse_objectives
from tuner._objectives import sign
from tuner.attributes import ENSEMBLES_ATTR
from tuner.attributes import RETRAIN_ATTR
from tuner.errors import TunerError


def study_curve_objective(attrs: dict[str, Any]) -> str:
    """The objective a study's training curves followed (``val_accuracy`` of ``val_accuracy,param_count``)."""
    return curve_objective(parse_objectives(attrs.get("objective", "val_accuracy")))


def trial_space(attrs: dict[str, Any], params: dict[str, Any], *, train_steps: int | None = None,
                augment: str | None = None):
    """The space a study's trial was drawn from, as the search made it (data statistics, recipe),
    and hyperparameters fixed at the trial's ``params``: ``space.build(hp)`` rebuilds its model."""
    import keras_tuner

    from search_spaces import get_space

    space_cls = get_space(attrs["space"])
    hp = keras_tuner.HyperParameters()
    # A trial stored before a hyperparameter was added was built with its value from before.
    for name, value in {**space_cls.added, **params}.items():
        hp.Fixed(name, value)
    settings = attrs.get("settings", {})
    space = space_cls(
        attrs["input_shape"], attrs["classes"], mean=attrs.get("pixel_mean"),
        variance=attrs.get("pixel_variance"), augment=augment or settings.get("augment", "none"),
        train_steps=train_steps, label_smoothing=settings.get("label_smoothing", 0.0),
    )
    return space, hp


def study_data(attrs: dict[str, Any]) -> Any:
    """The study's dataset, split as the search split it; image files at the recorded size, from its cache."""
    from tuner.data import load_dataset

    return load_dataset(attrs.get("path", attrs["dataset"]), image_size=attrs.get("image_size"),
                        resize=attrs.get("resize", "crop"), cache_dir=attrs.get("cache"))


def rebuild_recipe(attrs: dict[str, Any], params: dict[str, Any], weights: str, *, averaged: bool) -> str:
    """Python that rebuilds the architecture and loads ``weights`` (for .weights.h5 exports);
    ``averaged``: the weights are of a flip-averaged model (``TunableSpace.inference_model``)."""
    from search_spaces import get_space

    params = {**get_space(attrs["space"]).added, **params}
    augment = attrs.get("settings", {}).get("augment", "none") if averaged else "none"
    return (
        "import keras_tuner\nfrom search_spaces import get_space\n"
        f"hp = keras_tuner.HyperParameters()\nfor name, value in {params!r}.items():\n"
        "    hp.Fixed(name, value)\n"
        f"space = get_space({attrs['space']!r})({tuple(attrs['input_shape'])!r}, {attrs['classes']}, "
        f"mean={attrs.get('pixel_mean')!r}, variance={attrs.get('pixel_variance')!r}, augment={augment!r})\n"
        f"model = space.inference_model(space.build(hp))\nmodel.load_weights({weights!r})\n"
    )


def export(
    study: str,
    output: str,
    *,
    trial: int | None = None,
    storage: str | None = None,
    artifacts: str | None = None,
    retrain: bool = False,
    epochs: int | None = None,
    overwrite: bool = False,
    ensemble: int | None = None,
    seeds: int = 1,
    top: int | None = None,
    quantize: str | None = None,
) -> dict[str, Any]:
    """Write a trial's model to ``output``: ``.keras``, ``.weights.h5``, a SavedModel folder, or for
    deployment ``.tflite`` (LiteRT; ``quantize`` ``float16`` or ``int8``) or ``.onnx``, which are
    verified with their own runtime on the test split before the export succeeds (``tuner.models._deploy``;
    the measurements are under ``"verified"``).

    Without ``trial`` the best trial. With ``retrain`` the configuration is trained again from
    scratch as the search trained it (``retrain_trial``), for ``epochs`` (default: the study's).
    With ``seeds=K`` each retrained configuration is trained K times (``retrain_trial``), every run is
    printed and recorded on the study (``record_runs``), and the run with the median validation score
    is exported; ``top=N`` retrains the N best trials so, ranked by their mean, and exports the winner.
    With ``ensemble=K`` one model that averages the class probabilities of the K best kept models
    (``ensemble_model``), its test accuracy measured on the study's test split.
    Returns a description: trial, space, hyperparameters, test accuracy, output, format, and for
    weights the Python that rebuilds the model.
    """
    from search_spaces import is_flip_averaged
    from storage import open_artifact_store
    from tuner.models._deploy import DEPLOY_SUFFIXES
    from tuner.models._deploy import check_deploy_format
    from tuner.models._deploy import verify
    from tuner.models._deploy import write_deployable
    from tuner.models._models import check_output
    from tuner.models._models import choose_trial
    from tuner.models._models import load_trial_model
    from tuner.models._models import pick_trial
    from tuner.models._models import ranked_trials
    from tuner.models._models import write_model
    from tuner.results._results import load_study

    if seeds < 1 or (top is not None and top < 1):
        raise TunerError("--seeds and --top take a number of at least 1")
    if (seeds > 1 or top is not None) and not retrain:
        raise TunerError("--seeds and --top train the configuration again: add --retrain")
    if top is not None and trial is not None:
        raise TunerError("--top retrains the best trials: it takes no --trial")
    if ensemble is not None:
        if ensemble < 2:
            raise TunerError(f"--ensemble needs at least 2 models, got {ensemble}")
        if retrain or trial is not None:
            raise TunerError("--ensemble averages the best kept models: it takes no --trial or --retrain")
        if output.endswith((".weights.h5", ".tflite", ".onnx")):
            raise TunerError("an ensemble exports as a whole model: use .keras or a SavedModel folder")
    loaded = load_study(study, storage)
    attrs = loaded.user_attrs
    out = check_output(output, overwrite)
    check_deploy_format(out, quantize)
    store = open_artifact_store(storage, artifacts, create=False)
    if ensemble is not None:
        return _export_ensemble(loaded, store, ensemble, out)
    retrained: list[tuple[Any, list[Any], dict[str, Any]]] = []  # (trial, runs, their summary)
    if retrain:
        maximize = sign(study_curve_objective(attrs)) > 0
        candidates = [pick_trial(loaded, trial)] if top is None else ranked_trials(loaded)[:top]
        if not candidates:
            raise TunerError(f"study {loaded.study_name!r} has no finished trial to retrain")
        for candidate in candidates:
            runs = retrain_trial(attrs, candidate, epochs, seeds)
            retrained.append((candidate, runs, record_runs(loaded, candidate.number, runs)))
        retrained.sort(key=lambda r: r[2]["value"]["mean"], reverse=maximize)
        chosen, runs, _ = retrained[0]
        result = median_run(runs, maximize)
        model, test_accuracy = result.model, result.test_accuracy
    else:
        chosen = choose_trial(loaded, store, trial)
        model, test_accuracy = load_trial_model(store, chosen), chosen.user_attrs.get("test_accuracy")
    verified = None
    if out.suffix in DEPLOY_SUFFIXES:
        data = study_data(attrs)
        kind = write_deployable(model, out, quantize=quantize, calibration=data.x_train)
        verified = verify(out, model, data.x_test, data.y_test, quantize=quantize)
    else:
        kind = write_model(model, out)
    description = describe_export(loaded, chosen, test_accuracy, out, kind, retrained=retrain)
    if verified is not None:
        description["verified"] = verified
    if retrained:
        description["seed"] = result.seed
        description["retrained_runs"] = [{"trial": t.number, **summary} for t, _, summary in retrained]
    if kind == "weights.h5":
        description["rebuild"] = rebuild_recipe(attrs, chosen.params, str(out),
                                                averaged=is_flip_averaged(model))
    return description


def retrain_trial(attrs: dict[str, Any], trial: Any, epochs: int | None, seeds: int = 1) -> list[Any]:
    """Train ``trial``'s configuration again from scratch, as the search trained it: the same splits,
    recipe, precision and guards (``TrialRunner``), for ``epochs`` (default: the study's
    ``--epochs``); each run's best epoch is kept and tested. The first of ``seeds`` runs uses the
    trial's own seed (it reproduces the trial, but on the whole training split where the trial
    explored on a subset of it, ``train_images``), the others the next seeds. Returns the
    ``TrialResult`` of each run, each with its ``seed`` set. The caller's Keras dtype policy and
    random states are as they were when it returns (``callers_state_kept``)."""
    from tuner.training._training import callers_state_kept
    from tuner.training._trial import TrialRunner

    settings = attrs.get("settings", {})
    epochs = epochs or settings.get("max_epochs") or 10
    if epochs <= 0:
        raise TunerError(f"--epochs must be a positive number, got {epochs}")
    data = study_data(attrs)
    batch_size = settings.get("batch_size") or 64
    space, hp = trial_space(attrs, trial.params, train_steps=epochs * math.ceil(len(data.y_train) / batch_size),
                            augment=trial.user_attrs.get("augment"))  # a final trial's may differ
    runner = TrialRunner(space, data, batch_size, study_curve_objective(attrs),
                         precision=settings.get("precision", "float32"), patience=settings.get("patience"),
                         deploy_costs=False)  # a retrain records no size or latency
    first = trial.user_attrs.get("seed", settings.get("seed", 0) + trial.number)  # older trials: as searched
    results = []
    with callers_state_kept():  # each run seeds the global random states and sets the dtype policy
        for seed in range(first, first + seeds):
            label = f"retrain of trial {trial.number}" + (f", seed {seed}" if seeds > 1 else "")
            result = runner.fit(runner.build(hp, seed), label=label, params=trial.params, epochs=epochs)
            result.seed = seed
            results.append(result)
    return results


def run_summary(results: list[Any]) -> dict[str, Any]:
    """The runs of one configuration as the study records them: each run's seed, validation
    (objective) and test accuracy, and their mean and standard deviation (n-1)."""
    import statistics

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    return {
        "runs": [{"seed": r.seed, "value": r.value, "test_accuracy": r.test_accuracy, "best_epoch": r.best_epoch}
                 for r in results],
        "value": spread([r.value for r in results]),
        "test_accuracy": spread([r.test_accuracy for r in results]),
    }


def record_runs(study: Any, number: int, results: list[Any]) -> dict[str, Any]:
    """Add the summary of ``results`` (retrains of trial ``number``) to the study's ``retrain_runs``
    attribute (each trial's retrains, oldest first: a later retrain adds, never replaces); returns it."""
    summary = {"epochs": max(r.epochs for r in results), **run_summary(results)}
    recorded = dict(study.user_attrs.get(RETRAIN_ATTR, {}))
    recorded[str(number)] = [*recorded.get(str(number), []), summary]
    study.set_user_attr(RETRAIN_ATTR, recorded)
    return summary


def median_run(results: list[Any], maximize: bool) -> Any:
    """The run with the median objective (the lower middle one of an even count, by rank)."""
    ranked = sorted(results, key=lambda r: r.value, reverse=maximize)
    return ranked[(len(ranked) - 1) // 2]


def ensemble_model(models: list[Any], names: list[str]) -> Any:
    """One plain Keras model that averages the class probabilities of ``models`` (each given its
    name from ``names``, so the members stay apart in the file); it loads with Keras alone."""
    import keras

    inputs = keras.Input(tuple(models[0].input_shape[1:]), name="image")
    members = [keras.Model(m.input, m.output, name=name) for m, name in zip(models, names, strict=True)]
    outputs = keras.layers.Average(name="average")([member(inputs) for member in members])
    model = keras.Model(inputs, outputs, name=f"ensemble_of_{len(models)}")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _export_ensemble(loaded: Any, store: Any, k: int, out: Any) -> dict[str, Any]:
    """``export(..., ensemble=k)``: the k best kept models averaged, tested, written to ``out``; the
    result is added to the study's ``ensembles`` attribute."""
    import numpy as np

    from tuner.models._models import kept_trials
    from tuner.models._models import load_trial_model
    from tuner.models._models import write_model
    from tuner.training._training import predict_classes

    kept = kept_trials(loaded, store)
    if len(kept) < k:
        raise TunerError(f"--ensemble {k} needs {k} kept models; study {loaded.study_name!r} kept "
                         f"{len(kept)} (search with --keep {k} or more)")
    members = kept[:k]
    model = ensemble_model([load_trial_model(store, t) for t in members], [f"trial_{t.number}" for t in members])
    attrs = loaded.user_attrs
    data = study_data(attrs)
    predicted = predict_classes(model, data.x_test)
    test_accuracy = float(np.mean(predicted == data.y_test.reshape(-1)))
    kind = write_model(model, out)
    best_single = members[0].user_attrs.get("test_accuracy")
    recorded = [*loaded.user_attrs.get(ENSEMBLES_ATTR, []),  # each export adds one; none is replaced
                {"trials": [t.number for t in members], "test_accuracy": test_accuracy,
                 "best_single_test_accuracy": best_single}]
    loaded.set_user_attr(ENSEMBLES_ATTR, recorded)
    return {**describe_export(loaded, members[0], test_accuracy, out, kind, retrained=False),
            "ensemble": [t.number for t in members], "best_single_test_accuracy": best_single,
            "hyperparameters": [dict(t.params) for t in members]}


def describe_export(loaded: Any, chosen: Any, test_accuracy: float | None, out: Any, kind: str, *,
                    retrained: bool) -> dict[str, Any]:
    """What ``export`` returns about a written file: the study, the trial, its space and input."""
    attrs = loaded.user_attrs
    return {
        "study": loaded.study_name,
        "trial": chosen.number,
        "value": chosen.values[0] if len(chosen.values) == 1 else None,
        **({"values": list(chosen.values)} if len(chosen.values) > 1 else {}),
        "test_accuracy": test_accuracy,
        "retrained": retrained,
        "space": attrs["space"],
        "hyperparameters": dict(chosen.params),
        "input_shape": attrs["input_shape"],
        **({"resize": attrs["resize"]} if attrs.get("resize") else {}),
        "classes": attrs["classes"],
        "class_names": attrs.get("class_names"),
        "output": str(out),
        "format": kind,
    }
