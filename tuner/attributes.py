"""The attributes tuner stores on Optuna studies and trials (``user_attrs``): the data contract that
``tuner best``, every export, the report, optuna-dashboard and a user's own Optuna code read.

Each is declared once here, with what it means; the reference page "Stored attributes" is made from
this table, and a test checks that a real search stores nothing undeclared. The module sits at the
bottom of the package, beside ``errors`` and ``_names``: every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attribute:
    """One user attribute: its ``name``, whether it is on the ``study`` or on a ``trial``, and what
    it holds."""

    name: str
    on: str
    meaning: str


ATTRIBUTES: dict[tuple[str, str], Attribute] = {}


def _declare(on: str, name: str, meaning: str) -> str:
    ATTRIBUTES[on, name] = Attribute(name, on, meaning)
    return name


def study_attribute(name: str, meaning: str) -> str:
    """Declare an attribute of the study; returns its name."""
    return _declare("study", name, meaning)


def trial_attribute(name: str, meaning: str) -> str:
    """Declare an attribute of a trial; returns its name."""
    return _declare("trial", name, meaning)


def declared(on: str, name: str) -> bool:
    """Whether ``name`` is a declared attribute of a study or trial (``on``)."""
    return (on, name) in ATTRIBUTES


# --- The study: what it searches, on what data, and what was done with its results. --------------
study_attribute("space", "The search space's name (`resnet`, `densenet`): checked when the study is continued.")
study_attribute("backend", "The engine that ran it: `optuna` or `keras-tuner`.")
study_attribute("algorithm", "Keras Tuner studies only: the tuner (`random`, `bayesian`, `hyperband`, `grid`).")
study_attribute("objective", "The objective, or several comma-separated for a Pareto search.")
study_attribute("overrides", "The `--set` overrides, name to value as typed.")
study_attribute("keras_backend", "The Keras backend the study was created on.")
study_attribute("dataset", "The dataset's name (`digits`, a file's or folder's name).")
study_attribute("input_shape", "Height, width and channels of the model's input.")
study_attribute("classes", "The number of classes.")
study_attribute("class_names", "The class names, in label order, where the data names them.")
study_attribute("splits", "The number of train, validation and test images.")
study_attribute("path", "The data file or folder, as an absolute path (not for built-in datasets).")
study_attribute("image_size", "Image folders: the size images were fitted to.")
study_attribute("resize", "Image folders: how another aspect ratio was fitted (`crop` or `pad`).")
study_attribute("skipped_files", "Image folders: files that could not be decoded.")
study_attribute("cache", "Image folders: the folder of decoded images.")
study_attribute("pixel_mean", "Per-channel mean of the training pixels: every model normalises inside itself.")
study_attribute("pixel_variance", "Per-channel variance of the training pixels.")
study_attribute("settings", "The search as asked for: the recipe (batch size, augmentation, precision, "
                            "patience, epochs, label smoothing) and the search's options.")
study_attribute("versions", "The versions of tuner, Keras, its backend, Optuna and Python that ran it.")
BUDGET_SPLIT_ATTR = study_attribute(
    "budget_split", "Under `--timeout`: the final trial's number, how many trials were explored, and the "
                    "seconds spent exploring and left to the final trial.")
KEPT_ATTR = study_attribute(
    "kept_models", "The models kept as artifacts, best first: `[trial number, value, artifact id]` each.")
RETRAIN_ATTR = study_attribute(
    "retrain_runs", "`tuner export --retrain`: per trial number, each retrain's epochs and the spread of "
                    "its seeds' values and test accuracies.")
ENSEMBLES_ATTR = study_attribute(
    "ensembles", "`tuner export --ensemble`: each ensemble's trials and test accuracy, beside its best "
                 "member's.")

# --- A trial: its recipe, its plan, what training measured, and why it ended as it did. -----------
trial_attribute("batch_size", "The batch size it trained with.")
trial_attribute("augment", "The augmentation it trained with (`none`, `flip`, `shift`, `flip_shift`).")
trial_attribute("precision", "The Keras dtype policy it trained with.")
trial_attribute("patience", "Epochs without improvement before it stops (`null`: never).")
trial_attribute("max_epochs", "The epochs it was given: `--epochs`, or fewer where the deadline allowed fewer.")
trial_attribute("label_smoothing", "The label smoothing of its loss.")
trial_attribute("seed", "The seed of its weights and data order.")
trial_attribute("owner", "The process training it (host, process id and start, and the GPUs it was given: "
                         "`--gpus`, or Ray's), so that a killed worker's trial is failed and retried at once.")
trial_attribute("param_count", "The model's parameters.")
trial_attribute("flops", "The model's floating-point operations per image.")
trial_attribute("predicted_seconds_per_epoch", "Its epoch time as predicted before training.")
trial_attribute("planned_epochs", "The epochs first planned from the prediction, where measured epochs "
                                  "changed the plan (`max_epochs` holds the new one).")
ROLE_ATTR = trial_attribute("role", "`final`: the search's last trial, the best configuration found "
                                    "trained for the time left; `alternative`: one of the space's "
                                    "known-good configurations, tried after the defaults and not pruned.")
TRAIN_IMAGES_ATTR = trial_attribute(
    "train_images", "Where it explored on a stratified subset of the training split, the whole split being "
                    "too large to explore in the time: the subset's size. The final trial trains on all of it.")
SKIPPED_ATTR = trial_attribute(
    "skipped", "Why it was not trained: its first epoch could not end before the deadline. Stored PRUNED; "
               "not counted as a trial.")
REJECTED_ATTR = trial_attribute(
    "rejected", "Why it was not trained: over `--max-params`, or an epoch too long for the final trial "
                "to train it properly. Stored PRUNED with a violated constraint; not counted as a trial.")
OVER_BUDGET_ATTR = trial_attribute(
    "over_budget", "Why a COMPLETE trial is infeasible: over `--max-latency-ms`. It keeps no model.")
CURVE_ATTR = trial_attribute(
    "curve", "Pareto searches: the curve objective after each epoch (Optuna keeps no intermediate "
             "values in a multi-objective study).")
trial_attribute("error", "Why it FAILED: the error's type and message.")
trial_attribute("model_error", "Why its model could not be kept (the trial itself completed).")
MODEL_ATTR = trial_attribute("model_artifact", "The artifact id of its kept model (`tuner export` reads it).")
TRIAL_ID_ATTR = trial_attribute("kt_trial_id", "Keras Tuner studies: the trial's id in Keras Tuner's own records.")
trial_attribute("algorithm", "Keras Tuner studies: the tuner that proposed it.")
trial_attribute("epochs", "The epochs it trained.")
trial_attribute("best_epoch", "The epoch whose weights it kept (the best on the objective).")
trial_attribute("train_seconds", "Seconds spent training, validation included.")
trial_attribute("seconds_per_epoch", "`train_seconds` per epoch.")
trial_attribute("step_seconds", "Seconds per training step, measured.")
trial_attribute("trace_seconds_per_layer", "Its first step's time (tracing) per model layer, for planning others.")
for split in ("train", "val", "test"):
    trial_attribute(f"{split}_loss", f"The {split} loss at the best epoch.")
    trial_attribute(f"{split}_accuracy", f"The {split} accuracy at the best epoch.")
trial_attribute("stopped_by", "Why it ended early, its best epoch kept: `deadline` or `interrupt` "
                              "(`too_slow`: its first epoch could not end in time).")
trial_attribute("model_bytes", "The size of the model it keeps, as stored.")
trial_attribute("latency_ms", "Its batch-1 prediction latency, in milliseconds.")
