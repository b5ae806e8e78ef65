"""Every use of another library's private API, each behind one function (or mixin class): the only module
that may touch them.

What a public API can do is done with it elsewhere; what is left is here, each function's docstring
naming the versions it was checked against, and ``tests/test_compat.py`` holding one test per function
that fails when an installed version changes the behaviour relied on. Upgrading TensorFlow, Keras,
Keras Tuner or Optuna: run that file first. ``tests/test_compat.py`` also scans our sources, so a
private name used anywhere else fails the suite.

At the bottom of the import graph: third-party libraries only, each imported inside the function that
needs it, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import keras
    import optuna


def tensorflow_gradient_registry() -> dict[str, Any] | None:
    """TensorFlow's process-wide gradient registry, name -> registration, or None on another backend
    or where it has moved.

    TensorFlow offers no public way to list or drop a registration (``tf.RegisterGradient`` only adds);
    each traced ``tf.custom_gradient`` adds a ``CustomGradient-N`` entry holding its graph, which
    ``tuner.training._training.forget_custom_gradients`` drops between trials. Private API:
    ``tensorflow.python.framework.ops._gradient_registry._registry``, a plain dict. Checked against
    TensorFlow 2.21.0 with Keras 3.15.1.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry
    except (ImportError, AttributeError):
        return None
    return registry if isinstance(registry, dict) else None


@contextlib.contextmanager
def keras_tuner_tracebacks_hidden() -> Iterator[None]:
    """Keras Tuner prints no traceback for a failed trial while inside (its ``trial.message`` still
    holds it); the setting is put back on leaving.

    Keras Tuner has no public switch: ``BaseTuner._try_run_and_update_trial`` prints the traceback when
    ``keras_tuner.src.config.DEBUG`` is true, its default. Checked against Keras Tuner 1.4.8.
    """
    from keras_tuner.src import config

    debug, config.DEBUG = config.DEBUG, False
    try:
        yield
    finally:
        config.DEBUG = debug


def trial_id_of(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of ``trial`` (not its number): the key of Optuna's storage API
    (``record_heartbeat``, ``get_trial``), which no public attribute of a trial gives.

    Private API: ``Trial._trial_id`` and ``FrozenTrial._trial_id``. Checked against Optuna 5.1.0.
    """
    return int(trial._trial_id)


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A ``Trial`` that writes to the RUNNING trial ``frozen`` of ``study``, as the one handed to an
    objective does (``set_user_attr``, ``report``, ``upload_artifact(study_or_trial=...)``).

    For a trial added with ``study.add_trial`` rather than ``study.ask``: Optuna recommends against
    calling the constructor, ``Trial(study, trial_id)``, directly, and the id is private
    (``trial_id_of``). Checked against Optuna 5.1.0.
    """
    import optuna

    return optuna.Trial(study, trial_id_of(frozen))


def let_keras_compile(layer: keras.layers.Layer) -> keras.layers.Layer:
    """``layer``, marked as compilable by XLA, so that it does not turn off the compilation of the whole
    train step (``jit_compile="auto"``).

    Keras marks its geometric augmentation layers ``supports_jit = False`` (TensorFlow's image
    transform does not compile) and checks the flag on every layer of a model
    (``keras.src.trainers.trainer.model_supports_jit``); the flag is an undocumented attribute of
    ``Layer``. Checked against Keras 3.15.1.
    """
    layer.supports_jit = True
    return layer


class TemplatedTrials:
    """A mixin for an ``optuna.storages.RDBStorage`` subclass: each trial ``Study.ask`` creates (none
    was queued) is written from the subclass's ``new_trial_template()`` in the same transaction as
    the trial itself, so what the template carries (``storage._owners``: the process that runs it)
    is there from the trial's first moment as RUNNING.

    Private API: ``Study.ask`` reaches an RDB storage through Optuna's ``_CachedStorage``, which calls
    ``RDBStorage._create_new_trial(study_id, template_trial)`` (the public ``create_new_trial``
    calls it too). Checked against Optuna 5.1.0.
    """

    def new_trial_template(self) -> optuna.trial.FrozenTrial:
        raise NotImplementedError

    def _create_new_trial(self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None) -> Any:
        template = self.new_trial_template() if template_trial is None else template_trial
        return super()._create_new_trial(study_id, template)  # type: ignore[misc]
