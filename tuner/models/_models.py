"""Keeping the winners: the best trials' models as Optuna artifacts, and exporting them for plain Keras.

During a search each COMPLETE trial that ranks among the best ``keep`` stores its best-epoch model
(``model.keras``: config and weights) through ``optuna.artifacts``; files of trials that drop out of
the top ``keep`` are deleted, so disk use stays bounded, and the search ends with exactly ``keep``
files (fewer if fewer trials completed). Pruned trials, and trials over a budget (``--max-params``,
``--max-latency-ms``: infeasible), store nothing. In a multi-objective study the kept models are
those of the Pareto front (any ``keep`` above 0): a trial keeps its model unless another kept trial
dominates it, and its arrival evicts those it dominates.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from tuner._objectives import dominates
from tuner.attributes import KEPT_ATTR
from tuner.attributes import MODEL_ATTR
from tuner.errors import TunerError

MODEL_FILENAME = "model.keras"
FORMATS = (".keras (whole model), .weights.h5 (weights only), a folder (TensorFlow SavedModel), "
           ".tflite (LiteRT) or .onnx")
logger = logging.getLogger(__name__)


def _rank_key(study: optuna.Study):
    sign = directions_signs(study)[0]
    return lambda trial: (-sign * trial.values[0], trial.number)


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Within every budget the search set (Optuna's constraints: feasible at 0 or less)."""
    return all(value <= 0 for value in trial.constraints.values())


def directions_signs(study: optuna.Study) -> tuple[float, ...]:
    """+1 for each objective the study maximises, -1 for each it minimises."""
    return tuple(1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions)


def has_file(store: Any, artifact_id: str) -> bool:
    try:
        store.open_reader(artifact_id).close()
    except (ArtifactNotFound, ValueError):
        return False
    return True


def kept_trials(study: optuna.Study, store: Any) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials whose model file is on disk, best first."""
    return [t for t in ranked_trials(study)
            if MODEL_ATTR in t.user_attrs and has_file(store, t.user_attrs[MODEL_ATTR])]


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible COMPLETE trials, best first (of equal values, the earlier trial); in a
    multi-objective study, by the first objective."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted([t for t in trials if feasible(t)], key=_rank_key(study))


class ModelKeeper:
    """Stores a finishing trial's model if it ranks among the best ``keep``; evicts those that drop out.

    Safe under any number of workers, on any machines that share the study store and the artifact
    store (a folder or a bucket): an offer holds the study's keeper lock, ``lock(name)`` (the store's
    own, ``storage.exclusive``), while it decides, uploads and evicts, and reads the ranking from the
    study's ``kept_models`` attribute (at most ``keep`` entries) rather than from every trial, so an
    offer costs the same in a study of ten trials or ten thousand.
    """

    def __init__(self, store: Any, keep: int, lock: Callable[[str], AbstractContextManager[Any]]) -> None:
        self.store = store
        self.keep = keep
        self.lock = lock

    def locked(self, study: optuna.Study) -> AbstractContextManager[Any]:
        return self.lock(f"tuner-keeper:{study.study_name}")

    def offer(self, trial: optuna.Trial, model: Any, value: float | tuple[float, ...]) -> None:
        """Never raises: a failure to store is logged on the trial, which stays a good trial.
        ``value`` is the objective's, or the tuple of them in a multi-objective study."""
        values = value if isinstance(value, tuple) else (value,)
        try:
            if self.keep > 0 and all(math.isfinite(v) for v in values):
                with self.locked(trial.study):
                    if isinstance(value, tuple):
                        self._offer_to_front(trial, model, value)
                    else:
                        self._offer(trial, model, value)
        except Exception as err:  # noqa: BLE001 - a full disk must not fail the trial
            message = f"{type(err).__name__}: {err}"[:500]
            trial.set_user_attr("model_error", message)
            logger.warning("trial %d: model not stored: %s", trial.number, message)

    def _offer(self, trial: optuna.Trial, model: Any, value: float) -> None:
        study = trial.study
        sign = directions_signs(study)[0]
        kept = _ranked(study.user_attrs.get(KEPT_ATTR, []), sign)
        if len(kept) >= self.keep and sign * value <= sign * kept[self.keep - 1][1]:
            return  # not among the best: nothing to write
        artifact_id = self._upload(trial, model)
        kept = _ranked([*kept, [trial.number, value, artifact_id]], sign)
        self._remove([entry[2] for entry in kept[self.keep:]])
        study.set_user_attr(KEPT_ATTR, kept[:self.keep])

    def _offer_to_front(self, trial: optuna.Trial, model: Any, values: tuple[float, ...]) -> None:
        study = trial.study
        sign = directions_signs(study)
        kept = study.user_attrs.get(KEPT_ATTR, [])
        if any(dominates(entry[1], values, sign) for entry in kept):
            return  # not on the front
        artifact_id = self._upload(trial, model)
        self._remove([entry[2] for entry in kept if dominates(values, entry[1], sign)])
        kept = [entry for entry in kept if not dominates(values, entry[1], sign)]
        study.set_user_attr(KEPT_ATTR, [*kept, [trial.number, list(values), artifact_id]])

    def _upload(self, trial: optuna.Trial, model: Any) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILENAME
            model.save(path)
            artifact_id = upload_artifact(artifact_store=self.store, file_path=str(path),
                                          study_or_trial=trial)
        trial.set_user_attr(MODEL_ATTR, artifact_id)
        return artifact_id

    def trim(self, study: optuna.Study) -> None:
        """Make the files match the best ``keep`` COMPLETE trials (the front's, in a multi-objective
        study), read from the whole study: the search's end calls it, so a trial that kept a model and
        then failed leaves no file behind."""
        multi = len(study.directions) > 1
        with self.locked(study):
            stored = [t for t in study.get_trials(deepcopy=False) if MODEL_ATTR in t.user_attrs]
            kept = kept_trials(study, self.store)
            if multi:
                front = {t.number for t in study.best_trials}  # Optuna's front: feasible, non-dominated
                best = [t for t in kept if t.number in front]
            else:
                best = kept[:self.keep]
            numbers = {t.number for t in best}
            self._remove([t.user_attrs[MODEL_ATTR] for t in stored if t.number not in numbers])
            study.set_user_attr(KEPT_ATTR, [[t.number, list(t.values) if multi else t.value,
                                             t.user_attrs[MODEL_ATTR]] for t in best])

    def _remove(self, artifact_ids: list[str]) -> None:
        for artifact_id in artifact_ids:
            try:
                self.store.remove(artifact_id)
            except (ArtifactNotFound, FileNotFoundError):
                pass  # removed before (an older version's eviction, or by hand)


def _ranked(entries: list[list[Any]], sign: float) -> list[list[Any]]:
    """``[trial number, value, artifact id]`` entries, best first (the earlier trial wins a tie)."""
    return sorted(entries, key=lambda entry: (-sign * entry[1], entry[0]))


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of ``study``, or its best feasible trial; a clear error where there is none
    (a multi-objective study has no single best: the front's points are chosen by number)."""
    if number is None:
        if len(study.directions) > 1:
            raise TunerError(f"study {study.study_name!r} has several objectives: choose a point of its "
                             "front with --trial N (tuner best --pareto lists them)")
        ranked = ranked_trials(study)
        if not ranked:
            over = " within its budgets" if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else ""
            raise TunerError(f"study {study.study_name!r} has no finished trial{over} to export")
        return ranked[0]
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number and trial.params:
            return trial
    raise TunerError(f"study {study.study_name!r} has no trial {number} with parameters")


def choose_trial(study: optuna.Study, store: Any, number: int | None):
    """The trial to export (the best by default); a clear error if its model was not kept."""
    chosen = pick_trial(study, number)
    kept = kept_trials(study, store)
    if chosen.number not in {t.number for t in kept}:
        exportable = ", ".join(str(t.number) for t in sorted(kept, key=lambda t: t.number)) or "none"
        raise TunerError(
            f"trial {chosen.number} has no stored model (only the best --keep trials keep theirs); "
            f"trials that can be exported: {exportable}; or use --retrain"
        )
    return chosen


def load_trial_model(store: Any, trial: optuna.trial.FrozenTrial):
    """Read a trial's stored model back; a damaged file is a clear error."""
    import keras

    from search_spaces import SparseSmoothedCrossentropy  # noqa: F401 - registers it: the file may name it

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILENAME
        try:
            download_artifact(artifact_store=store, artifact_id=trial.user_attrs[MODEL_ATTR],
                              file_path=str(path))
            return keras.saving.load_model(path)
        except Exception as err:  # noqa: BLE001 - any failure to read means an unusable file
            raise TunerError(f"the stored model of trial {trial.number} cannot be read "
                             f"({type(err).__name__}: {str(err)[:200]})") from None


def write_model(model: Any, output: Path) -> str:
    """Write ``model`` in the format the path asks for; returns the format's name."""
    import keras

    name = output.name
    if name.endswith(".weights.h5"):
        model.save_weights(output)
        return "weights.h5"
    if name.endswith(".keras"):
        if not isinstance(model.loss, str):  # our label-smoothing loss: plain Keras could not load it
            model.compile(optimizer=model.optimizer, loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
        model.save(output)
        return "keras"
    if output.suffix:
        raise TunerError(f"cannot tell the format of {output}: use {FORMATS}")
    if keras.backend.backend() != "tensorflow":
        raise TunerError(f"a SavedModel folder needs the TensorFlow backend (KERAS_BACKEND is "
                         f"{keras.backend.backend()}); export .keras or .weights.h5 instead")
    if output.exists():  # only reached with --overwrite (check_output)
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    model.export(str(output))
    return "savedmodel"


def check_output(output: str, overwrite: bool) -> Path:
    """The output path, refusing to replace what is there unless ``overwrite``."""
    path = Path(output).expanduser()
    if path.exists() and not overwrite:
        raise TunerError(f"{path} exists; choose another --output or pass --overwrite")
    if not path.parent.exists():
        raise TunerError(f"folder {path.parent} does not exist")
    return path
