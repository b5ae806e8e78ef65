"""``tuner._compat``: one test per shim over another library's private API, run against the installed
version, failing when that version changed what the shim relies on; and a scan of our sources that
fails where a module other than ``_compat`` touches another library's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

from tuner._compat import TemplatedTrials
from tuner._compat import keras_tuner_tracebacks_hidden
from tuner._compat import let_keras_compile
from tuner._compat import live_trial
from tuner._compat import tensorflow_gradient_registry
from tuner._compat import trial_id_of

ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("tuner", "search_spaces", "storage")
SCANNED = (*OUR_PACKAGES, "tests", "benchmarks")
COMPAT = ROOT / "tuner" / "_compat.py"
# Where a library keeps its internals: a module path through one of these is private whatever its names.
PRIVATE_PACKAGES = ("keras.src", "keras_tuner.src", "tensorflow.python")
LIBRARIES = ("keras", "keras_tuner", "tensorflow", "optuna")
# Private names that the scan accepts outside ``_compat``, as (path, source of the expression): each with
# the reason it is not another library's. Empty: keep it so, or say here why not.
ALLOWED: dict[tuple[str, str], str] = {}


def test_tensorflow_gradient_registry_is_the_dict_tensorflow_reads():
    """A traced ``tf.custom_gradient`` adds a ``CustomGradient-N`` entry, and dropping the entry is what
    TensorFlow sees (``forget_custom_gradients`` relies on both)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        assert tensorflow_gradient_registry() is None
        return
    import tensorflow as tf

    registry = tensorflow_gradient_registry()
    assert isinstance(registry, dict), (
        f"TensorFlow {tf.__version__} moved ops._gradient_registry._registry: update tuner._compat")

    @tf.custom_gradient
    def identity(x):
        return tf.identity(x), lambda dy: dy

    def custom() -> set[str]:
        return {name for name in registry if name.startswith("CustomGradient-")}

    traced = tf.function(identity)
    before = custom()
    traced.get_concrete_function(tf.TensorSpec([], tf.float32))
    added = custom() - before
    assert len(added) == 1, f"TensorFlow {tf.__version__} no longer registers a traced custom gradient here"
    del registry[added.pop()]
    x = tf.constant(2.0)
    with pytest.raises(LookupError, match="No gradient defined"):  # the dropped entry was TensorFlow's own
        with tf.GradientTape() as tape:
            tape.watch(x)
            tape.gradient(traced(x), x)


def search_a_failing_trial(folder: Path) -> None:
    """A Keras Tuner search of one trial, which fails."""
    import keras_tuner

    class Failing(keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            raise RuntimeError("a failed trial")

    hp = keras_tuner.HyperParameters()
    hp.Choice("x", [1, 2])
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=1, hyperparameters=hp,
        max_consecutive_failed_trials=5)
    tuner = Failing(oracle=oracle, directory=str(folder), project_name="p")
    tuner.search(verbose=0)
    (trial,) = tuner.oracle.trials.values()
    assert "RuntimeError: a failed trial" in trial.message  # the traceback is kept either way


def test_keras_tuner_tracebacks_hidden_silences_a_failed_trial_and_puts_the_setting_back(tmp_path, capsys):
    import keras_tuner

    search_a_failing_trial(tmp_path / "plain")
    assert "Traceback" in capsys.readouterr().err, (
        f"Keras Tuner {keras_tuner.__version__} no longer prints a failed trial's traceback: "
        "keras_tuner_tracebacks_hidden may go")
    with keras_tuner_tracebacks_hidden():
        search_a_failing_trial(tmp_path / "hidden")
    assert "Traceback" not in capsys.readouterr().err, (
        f"Keras Tuner {keras_tuner.__version__} prints tracebacks whatever config.DEBUG says: update tuner._compat")
    search_a_failing_trial(tmp_path / "after")
    assert "Traceback" in capsys.readouterr().err  # put back on leaving


def test_trial_id_of_is_the_storage_id_of_a_trial_and_of_a_frozen_trial():
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="first").ask()  # ids and numbers now differ
    study = optuna.create_study(storage=storage, study_name="second")
    trial = study.ask()
    assert trial_id_of(trial) != trial.number
    assert storage.get_trial(trial_id_of(trial)).number == trial.number
    (frozen,) = study.get_trials()
    assert trial_id_of(frozen) == trial_id_of(trial)


def test_live_trial_writes_to_a_trial_added_running(tmp_path):
    """What ``ModelKeeper.offer`` does with a trial the Keras Tuner backend added: attributes, an
    artifact, then ``tell``."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna.artifacts import get_all_artifact_meta
    from optuna.artifacts import upload_artifact
    from optuna.trial import TrialState

    study = optuna.create_study()
    study.ask()  # another trial first: the live one must not be confused with it
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"kt_trial_id": "0"}))
    frozen = study.get_trials()[1]
    trial = live_trial(study, frozen)
    assert trial.number == frozen.number
    trial.set_user_attr("model", "kept")
    (tmp_path / "model.keras").write_bytes(b"weights")
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    upload_artifact(artifact_store=store, file_path=str(tmp_path / "model.keras"), study_or_trial=trial)
    told = study.tell(frozen.number, 0.5, state=TrialState.COMPLETE)
    assert told.user_attrs == {"kt_trial_id": "0", "model": "kept"} and told.value == 0.5
    assert [meta.filename for meta in get_all_artifact_meta(trial)] == ["model.keras"]
    assert study.get_trials()[0].user_attrs == {}


def test_templated_trials_writes_the_trial_study_ask_creates_from_its_template(sqlite_url):
    """``Study.ask`` creates its trial through the mixin, from the template, in one write; a trial
    taken from the queue and one added with a template of its own are left as they are."""
    from optuna.trial import TrialState

    class Stamped(TemplatedTrials, optuna.storages.RDBStorage):
        def new_trial_template(self) -> optuna.trial.FrozenTrial:
            return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"stamp": "new"})

    study = optuna.create_study(storage=Stamped(sqlite_url), study_name="templated")
    study.ask()
    study.enqueue_trial({}, user_attrs={"stamp": "queued"})
    study.ask()
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"stamp": "added"}))
    read = optuna.load_study(study_name="templated", storage=sqlite_url).get_trials()
    assert [(t.state, t.user_attrs) for t in read] == [(TrialState.RUNNING, {"stamp": s}) for s in
                                                       ("new", "queued", "added")], (
        f"Optuna {optuna.__version__} no longer creates a study's new trials through "
        "RDBStorage._create_new_trial: update tuner._compat.TemplatedTrials")


def test_let_keras_compile_keeps_xla_for_a_model_with_a_geometric_augmentation():
    import keras

    def compiled(layer: keras.layers.Layer) -> bool:
        model = keras.Sequential([keras.Input((8, 8, 1)), layer])
        model.compile(loss="mse", jit_compile=True)
        return bool(model.jit_compile)

    with pytest.warns(UserWarning, match="jit_compile"):
        assert not compiled(keras.layers.RandomRotation(0.1)), (
            f"Keras {keras.__version__} compiles RandomRotation itself: let_keras_compile may go")
    assert compiled(let_keras_compile(keras.layers.RandomRotation(0.1))), (
        f"Keras {keras.__version__} no longer reads Layer.supports_jit: update tuner._compat")


def our_sources() -> list[Path]:
    """Every module of our packages, tests and benchmarks but ``_compat``."""
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py") if p != COMPAT)


def is_private(name: str) -> bool:
    """``_name``, not ``__dunder__`` (public protocol) nor ``__mangled`` (a class's own, by Python's rules)."""
    return name.startswith("_") and not name.startswith("__")


def ours_imported(tree: ast.AST) -> set[str]:
    """The names a module binds by importing from our packages: what they hold is ours."""
    names = set(OUR_PACKAGES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname for alias in node.names if alias.asname and alias.name.split(".")[0] in OUR_PACKAGES}
        elif isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] in OUR_PACKAGES):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def root_name(node: ast.expr) -> str | None:
    """``a`` for ``a.b.c``; None for an expression that is no dotted name (a call, a subscript)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_attribute(node: ast.AST, ours: set[str]) -> bool:
    """``x._name``, or a literal ``getattr(x, "_name")`` (``setattr``, ``hasattr``, ``delattr``), where
    ``x`` is not ``self``, ``cls`` or rooted at a name our packages gave."""
    if isinstance(node, ast.Attribute):
        return is_private(node.attr) and root_name(node.value) not in ours
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value) and root_name(node.args[0]) not in ours)


def private_import(node: ast.AST) -> bool:
    """An import from a library's internals (``keras.src``, ``optuna._imports``) or of a private name."""
    if isinstance(node, ast.Import):
        modules, names = [alias.name for alias in node.names], []
    elif isinstance(node, ast.ImportFrom):
        modules, names = [node.module or ""], [alias.name for alias in node.names]
    else:
        return False
    return any(module.split(".")[0] in LIBRARIES and (
        any(module == p or module.startswith(f"{p}.") for p in PRIVATE_PACKAGES)
        or any(is_private(part) for part in module.split("."))
        or any(is_private(name) for name in names)) for module in modules)


def inherited_privates(tree: ast.AST, ours: set[str]) -> list[ast.Attribute]:
    """``self._name`` in a class built on another library's class, where the class itself neither
    defines nor assigns ``_name``: the library's own (``self._get_checkpoint_fname`` of a Keras Tuner
    ``Tuner``)."""
    found = []
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        if all(root_name(base) in ours for base in cls.bases):
            continue
        defined = {node.name for node in cls.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        defined |= {target.id for node in cls.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(target, ast.Name)}
        uses = [node for node in ast.walk(cls) if isinstance(node, ast.Attribute) and is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")]
        defined |= {node.attr for node in uses if isinstance(node.ctx, ast.Store)}
        found += [node for node in uses if node.attr not in defined]
    return found


def private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``path:line: expression`` for each private name of another library that ``path`` touches, in
    line order, less those ``ALLOWED``."""
    tree = ast.parse(path.read_text(), str(path))
    ours = ours_imported(tree) | {"self", "cls"}
    ours |= {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}  # this module's classes
    nodes = [node for node in ast.walk(tree) if private_attribute(node, ours) or private_import(node)]
    found = sorted({(node.lineno, ast.unparse(node)) for node in [*nodes, *inherited_privates(tree, ours)]})
    relative = path.relative_to(root).as_posix()
    return [f"{relative}:{line}: {source}" for line, source in found if (relative, source) not in ALLOWED]


def test_only_compat_touches_another_librarys_private_names():
    found = [use for path in our_sources() for use in private_uses(path)]
    assert not found, "private API outside tuner/_compat.py (move it there, with a test):\n" + "\n".join(found)
    assert ROOT / "tuner" / "cli.py" in our_sources()  # the scan reads the sources where they are


BREAKS_THE_RULE = """
from tensorflow.python.framework import ops
import keras.src.backend
from optuna._imports import x
from optuna.study import _tell
registry = ops._gradient_registry
trial_id = trial._trial_id
value = getattr(study, "_storage")
super()._hidden()
class Tuner(keras_tuner.Tuner):
    def run(self):
        self._mine = 1
        return self._get_checkpoint_fname(self._mine)
"""
KEEPS_THE_RULE = """
import optuna.trial
import tuner.training._process as process
from tuner.data import _images
from tuner.training._training import Deadline
self._steps, cls._cache, process._Signals, _images._Opened, Deadline._x, tuner.driver._search, object.__name__
class Mine(keras.callbacks.Callback):
    _limit = 3
    def __init__(self):
        self._steps = 0
    def _more(self):
        return self._steps < self._limit
class Ours(Mine):
    def later(self):
        return self._steps + self._more()
"""


def test_the_scan_finds_each_kind_of_private_use_and_passes_our_own(tmp_path):
    """The rule itself, on a module that breaks it in each way and one that touches only our own names."""
    (tmp_path / "bad.py").write_text(BREAKS_THE_RULE)
    (tmp_path / "good.py").write_text(KEEPS_THE_RULE)
    assert [use.split(": ", 1)[1] for use in private_uses(tmp_path / "bad.py", tmp_path)] == [
        "from tensorflow.python.framework import ops", "import keras.src.backend", "from optuna._imports import x",
        "from optuna.study import _tell", "ops._gradient_registry", "trial._trial_id",
        "getattr(study, '_storage')", "super()._hidden", "self._get_checkpoint_fname"]
    assert private_uses(tmp_path / "good.py", tmp_path) == []
