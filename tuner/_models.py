"""Keeping the winners: the best trials' models as Optuna artifacts, and exporting them for plain Keras.

During a search each COMPLETE trial that ranks among the best ``keep`` stores its best-epoch model
(``model.keras``: config and weights) through ``optuna.artifacts``; files of trials that drop out of
the top ``keep`` are deleted, so disk use stays bounded. Pruned trials store nothing.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts import download_artifact
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from tuner.errors import TunerError

MODEL_ATTR = "model_artifact"
MODEL_FILENAME = "model.keras"
FORMATS = ".keras (whole model), .weights.h5 (weights only) or a folder (TensorFlow SavedModel)"
logger = logging.getLogger(__name__)


def _rank_key(study: optuna.Study):
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return lambda trial: sign * trial.value


def has_file(store: FileSystemArtifactStore, artifact_id: str) -> bool:
    try:
        store.open_reader(artifact_id).close()
    except (ArtifactNotFound, ValueError):
        return False
    return True


def kept_trials(study: optuna.Study, store: FileSystemArtifactStore) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials whose model file is on disk, best first."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if MODEL_ATTR in t.user_attrs and has_file(store, t.user_attrs[MODEL_ATTR])]
    return sorted(trials, key=_rank_key(study))


class ModelKeeper:
    """Stores a finishing trial's model if it ranks among the best ``keep``; evicts those that drop out."""

    def __init__(self, store: FileSystemArtifactStore, keep: int) -> None:
        self.store = store
        self.keep = keep

    def offer(self, trial: optuna.Trial, model: Any, value: float) -> None:
        """Never raises: a failure to store is logged on the trial, which stays a good trial."""
        try:
            self._offer(trial, model, value)
        except Exception as err:  # noqa: BLE001 - a full disk must not fail the trial
            message = f"{type(err).__name__}: {err}"[:500]
            trial.set_user_attr("model_error", message)
            logger.warning("trial %d: model not stored: %s", trial.number, message)

    def _offer(self, trial: optuna.Trial, model: Any, value: float) -> None:
        if self.keep <= 0 or not math.isfinite(value):
            return
        study = trial.study
        kept = kept_trials(study, self.store)
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        if len(kept) >= self.keep and sign * value >= sign * kept[self.keep - 1].value:
            return  # not among the best: nothing to write
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_FILENAME
            model.save(path)
            artifact_id = upload_artifact(artifact_store=self.store, file_path=str(path),
                                          study_or_trial=trial)
        trial.set_user_attr(MODEL_ATTR, artifact_id)
        # Read the kept models again: another worker may have stored or evicted one meanwhile.
        self.trim(study, keep=self.keep - 1)  # this trial took one of the places

    def trim(self, study: optuna.Study, keep: int | None = None) -> None:
        """Delete the model files of the finished trials ranked below the best ``keep`` (default:
        the keeper's). A file another worker deleted first is no error."""
        for old in kept_trials(study, self.store)[self.keep if keep is None else keep:]:
            try:
                self.store.remove(old.user_attrs[MODEL_ATTR])
            except (ArtifactNotFound, FileNotFoundError):
                pass


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of ``study``, or its best trial; a clear error where there is none."""
    if number is None:
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise TunerError(f"study {study.study_name!r} has no finished trial to export")
        return study.best_trial
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number and trial.params:
            return trial
    raise TunerError(f"study {study.study_name!r} has no trial {number} with parameters")


def choose_trial(study: optuna.Study, store: FileSystemArtifactStore, number: int | None):
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


def load_trial_model(store: FileSystemArtifactStore, trial: optuna.trial.FrozenTrial):
    """Read a trial's stored model back; a damaged file is a clear error."""
    import keras

    import search_spaces  # noqa: F401 - registers the spaces' custom loss, which the file may name

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
