"""Keeping the winners: stored models, retention, export for plain Keras, and the dashboard."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import optuna
import pytest
from conftest import TINY
from conftest import fake_trainer
from conftest import undeclared_attributes
from keeper_worker import offer_trials
from test_search import _call

import tuner
from tuner.cli import main


def _model_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "tuner-artifacts").iterdir() if not p.name.startswith("."))


def test_a_failed_write_leaves_the_trial_complete(sqlite_url, monkeypatch):
    from optuna.artifacts import FileSystemArtifactStore

    def full_disk(self, artifact_id, body):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer([0.5]))
    monkeypatch.setattr(FileSystemArtifactStore, "write", full_disk)
    (trial,) = tuner.search("resnet", "digits", trials=1, storage=sqlite_url, overrides=["depth=8"]).trials
    assert trial.state.name == "COMPLETE" and "No space left" in trial.user_attrs["model_error"]


@pytest.mark.core
@pytest.mark.slow
def test_export_round_trip_in_a_python_with_only_keras(capsys, trained_study, tmp_path):
    store = ["--storage", trained_study]
    # With label smoothing (a custom loss) the exported file must still load in plain Keras.
    assert optuna.load_study(study_name="d", storage=trained_study).trials[0].user_attrs["label_smoothing"] == 0.1
    # A fresh process, as a user runs it: reading the stored model must find the custom loss.
    exported = subprocess.run([sys.executable, "-m", "tuner", "export", "--study", "d", "--output",
                               str(tmp_path / "best.keras"), "--json", *store],
                              capture_output=True, text=True, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    out = exported.stdout
    described = json.loads(out[out.index("{"):])
    recorded = described["test_accuracy"]

    # The average of the three kept models, as one file.
    assert main(["export", "--study", "d", "--output", str(tmp_path / "ens.keras"), "--ensemble", "3", "--json",
                 *store]) == 0
    out = capsys.readouterr().out
    averaged = json.loads(out[out.index("{"):])
    assert sorted(averaged["ensemble"]) == [0, 1, 2] and averaged["test_accuracy"] > 0.3  # chance: 0.1
    (recorded_ensemble,) = optuna.load_study(study_name="d", storage=trained_study).user_attrs["ensembles"]
    assert recorded_ensemble["test_accuracy"] == averaged["test_accuracy"]

    # Retrain from scratch through the trial runner with three seeds: each run printed, then mean ± std;
    # the runs recorded on the study; the median run exported (it learns again: chance is 0.1).
    assert main(["export", "--study", "d", "--output", str(tmp_path / "re.keras"), "--retrain", "--seeds", "3",
                 "--epochs", "2", *store]) == 0
    out = capsys.readouterr().out
    assert out.count("  seed ") == 3 and "mean ± std: val " in out and "the median run (seed " in out
    assert main(["best", "--study", "d", "--json", *store]) == 0
    out = capsys.readouterr().out
    (runs,) = json.loads(out[out.index("{"):])["retrain_runs"]
    tests = sorted(r["test_accuracy"] for r in runs["runs"])
    assert len(tests) == 3 and len({r["seed"] for r in runs["runs"]}) == 3 and tests[0] > 0.3
    assert runs["test_accuracy"]["mean"] == pytest.approx(np.mean(tests))
    # Everything the search, the keeper, the ensemble and the retrains stored is on the reference page.
    assert undeclared_attributes(optuna.load_study(study_name="d", storage=trained_study)) == []
    middle = sorted(r["value"] for r in runs["runs"])[1]
    medians = [r["test_accuracy"] for r in runs["runs"] if r["value"] == middle]  # runs may tie

    data = tuner.load_dataset("digits")
    np.savez(tmp_path / "test.npz", x=data.x_test, y=data.y_test)
    # -I: isolated, so neither this project nor the working directory is importable by accident.
    script = (
        "import sys, numpy as np, keras\n"
        f"model = keras.saving.load_model({str(tmp_path / 'best.keras')!r})\n"
        f"d = np.load({str(tmp_path / 'test.npz')!r})\n"
        "print(model.evaluate(d['x'], d['y'], verbose=0)[1])\n"
        f"ensemble = keras.saving.load_model({str(tmp_path / 'ens.keras')!r})\n"
        f"np.save({str(tmp_path / 'ens.npy')!r}, ensemble.predict(d['x'], verbose=0))\n"
        f"print(keras.saving.load_model({str(tmp_path / 're.keras')!r}).evaluate(d['x'], d['y'], verbose=0)[1])\n"
        "assert not any(m.split('.')[0] in ('tuner', 'search_spaces', 'storage') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    best_accuracy, retrained_accuracy = (float(v) for v in result.stdout.strip().splitlines()[-2:])
    assert abs(best_accuracy - recorded) <= 0.005
    assert any(abs(retrained_accuracy - m) <= 0.005 for m in medians)
    # The ensemble's predictions are the mean of the kept models' own.
    from tuner.models._models import kept_trials
    from tuner.models._models import load_trial_model

    study = optuna.load_study(study_name="d", storage=trained_study)
    artifacts = optuna.artifacts.FileSystemArtifactStore(tmp_path / "tuner-artifacts")
    members = [load_trial_model(artifacts, t) for t in kept_trials(study, artifacts)]
    mean = np.mean([m.predict(data.x_test, verbose=0) for m in members], axis=0)
    ensemble_probs = np.load(tmp_path / "ens.npy")
    np.testing.assert_allclose(ensemble_probs, mean, atol=1e-5)
    assert averaged["test_accuracy"] == pytest.approx(float(np.mean(ensemble_probs.argmax(1) == data.y_test)))
    assert main(["export", "--study", "d", "--output", str(tmp_path / "e4.keras"), "--ensemble", "4", *store]) == 2
    assert "--ensemble 4 needs 4 kept models; study 'd' kept 3" in capsys.readouterr().err

    # Weights alone, with the recipe to rebuild; a SavedModel folder on TensorFlow.
    assert main(["export", "--study", "d", "--output", str(tmp_path / "w.weights.h5"), "--json", *store]) == 0
    out = capsys.readouterr().out
    recipe = json.loads(out[out.index("{"):])["rebuild"]
    scope: dict = {}
    exec(recipe, scope)  # noqa: S102 - the printed recipe must actually rebuild the model
    probs = scope["model"].predict(data.x_test[:50], verbose=0)
    assert (probs.argmax(1) == data.y_test[:50]).mean() > 0.3
    if keras.backend.backend() == "tensorflow":
        assert main(["export", "--study", "d", "--output", str(tmp_path / "serving"), *store]) == 0
        assert (tmp_path / "serving" / "saved_model.pb").exists()
    else:
        assert main(["export", "--study", "d", "--output", str(tmp_path / "serving"), *store]) == 2
        assert "needs the TensorFlow backend" in capsys.readouterr().err

    # Existing output is never overwritten silently.
    assert main(["export", "--study", "d", "--output", str(tmp_path / "best.keras"), *store]) == 2
    assert "exists; choose another --output or pass --overwrite" in capsys.readouterr().err

    # optuna-dashboard lists the kept trial's artifact.
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    app = wsgi(trained_study, artifact_store=FileSystemArtifactStore(tmp_path / "tuner-artifacts"))
    study_id = _call(app, "/api/studies")["study_summaries"][0]["study_id"]
    trials = _call(app, f"/api/studies/{study_id}")["trials"]
    assert any(a["filename"] == "model.keras" for t in trials for a in t["artifacts"])


@pytest.mark.slow
def test_the_new_spaces_learn_digits_and_export_models_plain_keras_loads(capsys, sqlite_url, tmp_path):
    """Each space added after resnet and densenet: a trial learns digits, its export loads and scores
    the same in a Python with Keras and without this project."""
    spaces = ["inception", "resnet_imagenet", "vgg"]
    recorded = {}
    for space in spaces:
        tuner.search(space, "digits", trials=1, epochs=2, storage=sqlite_url, study=space, overrides=TINY[space],
                     batch_size=32, seed=0)
        assert main(["export", "--study", space, "--storage", sqlite_url, "--output", str(tmp_path / f"{space}.keras"),
                     "--json"]) == 0
        out = capsys.readouterr().out
        recorded[space] = json.loads(out[out.index("{"):])["test_accuracy"]
    assert all(accuracy > 0.3 for accuracy in recorded.values()), recorded  # chance: 0.1
    data = tuner.load_dataset("digits")
    np.savez(tmp_path / "test.npz", x=data.x_test, y=data.y_test)
    script = (
        "import sys, numpy as np, keras\n"
        f"d = np.load({str(tmp_path / 'test.npz')!r})\n"
        f"for space in {spaces!r}:\n"
        f"    model = keras.saving.load_model({str(tmp_path)!r} + '/' + space + '.keras')\n"
        "    print(model.evaluate(d['x'], d['y'], verbose=0)[1])\n"
        "assert not any(m.split('.')[0] in ('tuner', 'search_spaces', 'storage') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = [float(line) for line in result.stdout.strip().splitlines()[-3:]]
    assert loaded == pytest.approx([recorded[space] for space in spaces], abs=0.005)


@pytest.mark.slow
def test_retraining_the_top_trials_ranks_them_by_their_mean(capsys, sqlite_url, tmp_path, monkeypatch):
    """--top 2 --seeds 2: the two best trials retrained twice each; the one with the better mean wins
    even where the search ranked it second, and both are recorded on the study."""
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer([0.5, 0.9, 0.7]))
    tuner.search("resnet", "digits", trials=3, study="t", storage=sqlite_url, overrides=["depth=8"], pruner="none")
    # Retrains run best trial first: trial 1 (0.9) scores 0.60 and 0.62, trial 2 (0.7) 0.80 and 0.78.
    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer([0.6, 0.62, 0.8, 0.78]))
    store = ["--storage", sqlite_url]
    assert main(["export", "--study", "t", "--output", str(tmp_path / "top.keras"), "--retrain", "--top", "2",
                 "--seeds", "2", "--json", *store]) == 0
    out = capsys.readouterr().out
    described = json.loads(out[out.index("{"):])
    assert described["trial"] == 2 and [r["trial"] for r in described["retrained_runs"]] == [2, 1]
    assert described["retrained_runs"][0]["value"]["mean"] == pytest.approx(0.79)
    assert described["test_accuracy"] in (0.8, 0.78)
    recorded = optuna.load_study(study_name="t", storage=sqlite_url).user_attrs["retrain_runs"]
    assert sorted(recorded) == ["1", "2"] and len(recorded["1"][0]["runs"]) == 2

    for argv, message in ((["--seeds", "2"], "add --retrain"), (["--retrain", "--top", "2", "--trial", "1"],
                                                               "it takes no --trial"),
                          (["--retrain", "--seeds", "0"], "at least 1")):
        assert main(["export", "--study", "t", "--output", str(tmp_path / "x.keras"), *argv, *store]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x.keras").exists()


def test_missing_corrupt_and_empty_are_clear_errors(capsys, sqlite_url, tmp_path, monkeypatch):

    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer([0.5, 0.9, 0.7]))
    tuner.search("resnet", "digits", trials=3, study="m", storage=sqlite_url, keep=1, overrides=["depth=8"],
                 pruner="none")
    store = ["--storage", sqlite_url]
    code = main(["export", "--study", "m", "--trial", "0", "--output", str(tmp_path / "x.keras"), *store])
    assert code == 2
    assert "trial 0 has no stored model" in capsys.readouterr().err
    (kept,) = _model_files(tmp_path)
    (tmp_path / "tuner-artifacts" / kept).write_bytes(b"not a zip file")
    code = main(["export", "--study", "m", "--output", str(tmp_path / "x.keras"), *store])
    err = capsys.readouterr().err
    assert code == 2 and "the stored model of trial 1 cannot be read" in err and err.count("\n") == 1
    assert not (tmp_path / "x.keras").exists()

    optuna.create_study(study_name="empty", storage=sqlite_url)
    code = main(["export", "--study", "empty", "--output", str(tmp_path / "x.keras"), *store])
    assert code == 2 and "has no finished trial to export" in capsys.readouterr().err
    code = main(["export", "--study", "m", "--output", str(tmp_path / "x.txt"), "--trial", "1", *store])
    assert code == 2


def test_best_shows_the_model_file_and_dashboard_serves(capsys, sqlite_url, tmp_path, monkeypatch):
    import optuna_dashboard


    monkeypatch.setattr("tuner.training._trial.train_and_evaluate", fake_trainer([0.5]))
    tuner.search("resnet", "digits", trials=1, study="b", storage=sqlite_url, overrides=["depth=8"])
    assert main(["best", "--study", "b", "--storage", sqlite_url, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["model_file"].startswith(str(tmp_path / "tuner-artifacts"))
    assert best["export_command"].startswith("tuner export --study b")

    served = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: served.update(kw))
    assert main(["dashboard", "--storage", sqlite_url, "--port", "8123"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8123 and served["artifact_store"] is not None
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out


def test_keeping_tolerates_a_file_another_worker_already_evicted(tmp_path):
    """Two workers that finish together can each keep a model: the search's end trims the excess,
    and a file the other worker deleted first is no error (no false ``model_error``)."""
    import contextlib

    from optuna.artifacts import FileSystemArtifactStore
    from optuna.artifacts import upload_artifact

    from tuner.attributes import MODEL_ATTR
    from tuner.models._models import ModelKeeper

    (tmp_path / "store").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "store"))
    study = optuna.create_study(direction="maximize")
    source = tmp_path / "model.keras"
    source.write_bytes(b"a model")
    for value in (0.9, 0.8, 0.7):
        trial = study.ask()
        trial.set_user_attr(MODEL_ATTR, upload_artifact(artifact_store=store, file_path=str(source),
                                                        study_or_trial=trial))
        study.tell(trial, value)
    worst = study.trials[2].user_attrs[MODEL_ATTR]
    keeper = ModelKeeper(store, keep=2, lock=lambda name: contextlib.nullcontext())
    real_remove = store.remove

    def removed_first_by_another_worker(artifact_id):
        real_remove(artifact_id)
        real_remove(artifact_id)  # the second removal is the slower worker's: the file is gone

    store.remove = removed_first_by_another_worker
    keeper.trim(study)
    assert _files(tmp_path / "store") == sorted(t.user_attrs[MODEL_ATTR] for t in study.trials[:2])
    assert worst not in _files(tmp_path / "store")


def _files(folder):
    """The model files in an artifact folder (not the keeper's lock file)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_four_workers_keeping_two_models_end_with_exactly_two(storage_url, unique_name, tmp_path):
    """Four processes finish trials at the same moments: each offer ranks, uploads and evicts under
    the study store's lock (a lock file beside SQLite, an advisory lock in PostgreSQL), so the
    artifact store never holds more than --keep files, and they are the best trials' (no eviction is
    lost, no file removed twice, no false ``model_error``)."""
    import multiprocessing

    from tuner.attributes import KEPT_ATTR
    from tuner.attributes import MODEL_ATTR

    folder = tmp_path / "artifacts"
    folder.mkdir()
    optuna.create_study(study_name=unique_name, storage=storage_url, direction="maximize")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    workers = [context.Process(target=offer_trials, args=(storage_url, str(folder), unique_name, w, barrier))
               for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    study = optuna.load_study(study_name=unique_name, storage=storage_url)
    assert not [t.number for t in study.trials if "model_error" in t.user_attrs]
    best_two = sorted(study.trials, key=lambda t: -t.value)[:2]
    assert _files(folder) == sorted(t.user_attrs[MODEL_ATTR] for t in best_two)
    assert [entry[0] for entry in study.user_attrs[KEPT_ATTR]] == [t.number for t in best_two]
