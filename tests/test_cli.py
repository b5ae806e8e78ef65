"""The ``tuner`` CLI, in process (``main(argv)``) against a real SQLite file, plus the entry points."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from conftest import watch_trials

from tuner.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_spaces_lists_both_spaces_with_ranges(capsys):
    code, out, _ = run(capsys, "spaces", "--json")
    spaces = json.loads(out)
    assert code == 0 and set(spaces) == {"auto", "densenet", "inception", "resnet", "resnet_imagenet", "vgg"}
    assert spaces["resnet"]["hyperparameters"]["depth"]["values"] == [8, 14, 20, 32, 44, 56, 110]
    assert spaces["densenet"]["hyperparameters"]["learning_rate"]["sampling"] == "log"
    code, out, _ = run(capsys, "spaces")
    assert code == 0 and "growth_rate" in out and "choice of 8, 14, 20" in out


def test_each_search_option_is_declared_once_and_reaches_flag_signature_and_reference():
    import dataclasses
    import inspect

    import tuner
    from tuner.cli import build_parser
    from tuner.cli import request_flags

    fields = dataclasses.fields(tuner.SearchRequest)
    flags = request_flags()
    # The one option without a flag is the moment the search ends: the command sets it from its start.
    assert [f.name for f in fields if f.name not in flags] == ["deadline"]
    # tuner.search's signature is the request's: names, types and defaults.
    parameters = inspect.signature(tuner.search).parameters
    assert [(p.name, p.default) for p in parameters.values()] == [(f.name, f.default) for f in fields]
    assert all(f"``{f.name}=" in tuner.search.__doc__ for f in fields[2:])  # after space and dataset
    parsed = build_parser().parse_args(["search"])
    for name, spec in flags.items():
        assert spec["help"] and getattr(parsed, name) == spec["default"], name
    # The reference page is generated from the same declarations (tests/test_docs.py reads the built site).
    reference = (Path(__file__).parent.parent / "docs" / "reference" / "cli.md").read_text()
    assert "<!-- generated: search-options -->" in reference


@pytest.mark.core
@pytest.mark.slow
def test_search_prints_its_progress_and_best_trial(capsys, sqlite_url):
    store = ["--storage", sqlite_url]
    tiny = [f"--set={item}" for item in TINY["resnet"]]
    code, out, err = run(capsys, "search", "--space", "resnet", "--trials", "2", "--epochs", "1",
                         "--study", "demo", "--recycle-after", "0", *store, *tiny)
    assert code == 0, err
    assert "best trial" in out and "test_accuracy=" in out
    assert "trial 1 epoch 1/1" in err and "trial 1 COMPLETE" in err  # progress goes to stderr

    code, out, _ = run(capsys, "trials", "--study", "demo", *store, "--json")
    assert [t["state"] for t in json.loads(out)] == ["COMPLETE", "COMPLETE"]


def test_best_trials_and_studies_read_the_store(capsys, trained_study):
    store = ["--storage", trained_study]
    code, out, _ = run(capsys, "best", "--study", "d", *store, "--json")
    best = json.loads(out)
    assert code == 0 and best["state"] == "COMPLETE" and best["params"]["depth"] == 8
    assert best["study"]["space"] == "resnet" and best["test_accuracy"] > 0.3  # it learned: chance is 0.1

    code, out, _ = run(capsys, "trials", "--study", "d", *store, "--json")
    assert [t["state"] for t in json.loads(out)] == ["COMPLETE"] * 3
    code, out, _ = run(capsys, "trials", "--study", "d", *store)
    assert code == 0 and "COMPLETE" in out and "depth=8" in out

    code, out, _ = run(capsys, "studies", *store, "--json")
    (study,) = json.loads(out)
    assert (study["name"], study["complete"], study["space"]) == ("d", 3, "resnet")
    code, out, _ = run(capsys, "best", "--study", "d", *store)
    assert code == 0 and "test_accuracy" in out and "param depth" in out

    # Optuna's own CLI reads the store with no conversion.
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "trials", "--storage", trained_study, "--study-name", "d",
         "-f", "json"], capture_output=True, text=True, check=True)
    trials = json.loads(listed.stdout)
    assert len(trials) == 3
    assert set(trials[0]["params"]) == {"depth", "filters", "kernel_size", "stem_stride", "version", "dropout", "l2",
                                        "learning_rate", "optimizer", "lr_schedule", "activation", "l1"}


def test_importance_ranks_the_hyperparameter_that_decides_the_objective(capsys, sqlite_url):
    """On a study whose objective depends on ``lr`` alone, ``lr`` is the most important hyperparameter,
    its best values are those of the top trials, and ``best`` shows the same importances."""
    import optuna

    study = optuna.create_study(storage=sqlite_url, study_name="imp", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -abs(t.suggest_float("lr", 0.0, 1.0) - 0.3)
                   + 0 * t.suggest_int("depth", 8, 20) + 0 * len(t.suggest_categorical("opt", ["adam", "sgd"])),
                   n_trials=24)
    code, out, _ = run(capsys, "importance", "--study", "imp", "--storage", sqlite_url, "--json")
    found = json.loads(out)
    rows = {row["name"]: row for row in found["hyperparameters"]}
    assert code == 0 and found["finished_trials"] == 24 and found["top_trials"] == 6
    assert max(rows, key=lambda name: rows[name]["importance"]) == "lr"
    assert sum(row["importance"] for row in rows.values()) == pytest.approx(1.0)
    top = sorted(study.trials, key=lambda t: -t.value)[:6]
    assert rows["lr"]["top_values"] == {"low": min(t.params["lr"] for t in top),
                                        "high": max(t.params["lr"] for t in top)}
    assert rows["lr"]["best_value"] == study.best_params["lr"]
    assert set(rows["opt"]["top_values"]["values"]) <= {"adam", "sgd"}

    code, out, _ = run(capsys, "importance", "--study", "imp", "--storage", sqlite_url)
    assert code == 0 and "lr" in out and "values in the best 6 trials" in out
    code, out, _ = run(capsys, "best", "--study", "imp", "--storage", sqlite_url, "--json")
    assert json.loads(out)["importance"] == {name: row["importance"] for name, row in rows.items()}

    optuna.create_study(storage=sqlite_url, study_name="one").optimize(
        lambda t: t.suggest_float("lr", 0.0, 1.0), n_trials=1)
    code, _, err = run(capsys, "importance", "--study", "one", "--storage", sqlite_url)
    assert code == 2 and "needs at least 2 finished trials; study 'one' has 1" in err


# What TensorFlow, XLA, absl and CUDA print as they start (none of it is tuner's to show).
STARTUP_CHATTER = ("absl::InitializeLog", "oneDNN", "cuInit", "cuda", "CUDA", "TensorFlow binary",
                   "AVX", "E0000", "W0000", "I0000")


def user_env() -> dict[str, str]:
    """The environment a user runs ``tuner`` in: no TF_CPP_MIN_LOG_LEVEL (pytest's own runs set none
    either), so the frameworks' start-up lines are there for the CLI to filter."""
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TUNER_VERBOSE")}


def test_verbose_shows_the_frameworks_start_up_lines(tmp_path):
    """``--verbose`` shows what the frameworks print as they start; without it, ``tuner search`` shows
    its own lines only (checked on the real CLI by the kill -9 and Ctrl-C tests, in this process and in
    a worker process)."""
    shown = subprocess.run([sys.executable, "-m", "tuner", "export", "--study", "none", "--output", "x.keras",
                            "--storage", f"sqlite:///{tmp_path / 'quiet.db'}", "--verbose"],
                           capture_output=True, text=True, env=user_env(), cwd=tmp_path)
    assert shown.returncode == 2 and any(word in shown.stderr for word in STARTUP_CHATTER)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("argv,message", [
    (["search", "--sampler", "grid"], "invalid choice: 'grid' (choose from 'tpe', 'random'"),
    (["search", "--objective", "acc"], "unknown objective 'acc'; choose one or more (comma-separated) of: val_"),
    (["search", "--objective", "param_count,latency_ms"], "--objective needs one of val_accuracy, val_loss"),
    (["search", "--objective", "val_accuracy,param_count", "--backend", "keras-tuner"], "need --backend optuna"),
    (["search", "--max-params", "lots"], "--max-params takes a count such as 250000, 250k or 1.5M, got 'lots'"),
    (["search", "--max-latency-ms", "-1"], "--max-latency-ms must be a positive number"),
    (["search", "--trials", "many"], "argument --trials: invalid int value"),
    (["search", "--space", "alexnet"],
     "unknown space 'alexnet'; choose one of: auto, densenet, inception, resnet, resnet_imagenet, vgg"),
    (["search", "--set", "depth=21"], "--set depth=21: depth must be one of 8, 14, 20"),
    (["search", "--set", "width=2"], "unknown hyperparameter 'width'; choose one of:"),
    (["search", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: digits"),
    (["search", "--epochs", "0"], "--epochs must be a positive number"),
    (["search", "--gpus-per-trial", "0.5"], "--gpus-per-trial places workers with --ray"),
    (["search", "--ray", "--gpus", "0,1"], "give --gpus-per-trial instead of --gpus"),
    (["search", "--ray", "--backend", "keras-tuner"], "--ray need --backend optuna"),
    (["search", "--artifacts", "s3:///runs"], "--artifacts s3:///runs names no bucket: s3://BUCKET/PREFIX"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["best"], "the following arguments are required: --study"),
    (["best", "--study", "x"], "no store at tuner.db"),
])
def test_input_mistakes_exit_2_with_one_line(capsys, argv, message, tmp_path):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tuner: error: ") and message in err
    assert "Traceback" not in out + err
    assert list(tmp_path.iterdir()) == []  # nothing created on disk: no store, no artifact folder


@pytest.mark.parametrize("module,argv,message", [
    ("ray", ["--ray", "auto"], "--ray needs Ray, which is not installed: pip install"),
    ("boto3", ["--artifacts", "s3://bucket/runs"], "--artifacts s3:// needs boto3, which is not installed: pip"),
    ("google", ["--artifacts", "gs://bucket/runs"], "--artifacts gs:// needs google.cloud.storage, which is not"),
])
def test_an_extra_that_is_not_installed_is_named_in_one_line(capsys, monkeypatch, tmp_path, module, argv, message):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == module else find_spec(name))
    code, _, err = run(capsys, "search", *argv)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_store_errors_exit_2_and_leave_the_file_untouched(capsys, tmp_path, sqlite_url):
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    before = _sha(bad)
    for command in (["studies"], ["best", "--study", "x"], ["search", "--trials", "1"]):
        code, _, err = run(capsys, *command, "--storage", f"sqlite:///{bad}")
        assert code == 2 and err.count("\n") == 1 and "cannot open the store" in err
    assert _sha(bad) == before

    from storage import open_storage

    open_storage(sqlite_url)  # an empty store
    assert run(capsys, "studies", "--storage", sqlite_url)[1].startswith("no studies yet")
    code, _, err = run(capsys, "trials", "--study", "nope", "--storage", sqlite_url)
    assert code == 2 and "no study 'nope' in the store; studies: none yet" in err


def test_installed_entry_point_answers_help():
    result = subprocess.run([str(Path(sys.executable).parent / "tuner"), "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    for command in ("search", "spaces", "studies", "trials", "best", "importance", "export", "dashboard"):
        assert command in result.stdout


def test_progress_names_a_keras_tuner_trial_by_both_ids():
    """A Keras Tuner trial gets its Optuna number only when it is written at its end: the end line
    shows both, so it can be matched with its start and epoch lines."""
    import io

    import optuna
    from rich.console import Console

    from tuner.training._progress import SearchProgress

    out = io.StringIO()
    progress = SearchProgress(enabled=True, objective="val_accuracy", epochs=2,
                              console=Console(file=out, width=200))
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))  # an earlier run's trial: numbers differ
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"kt_trial_id": "00"}))
    progress.trial_started("kt-00", {"depth": 8})
    progress.epoch_ended("kt-00", 1, {"val_accuracy": 0.9})
    progress.trial_finished(study, study.trials[1])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trial kt-00  depth=8") and lines[1].startswith("  trial kt-00 epoch 1/2")
    assert lines[2].startswith("trial 1 (kt-00) COMPLETE  val_accuracy=0.9000")


def test_progress_says_what_the_deadline_did():
    import io

    import optuna
    from rich.console import Console

    from tuner.training._progress import SearchProgress

    out = io.StringIO()
    progress = SearchProgress(enabled=True, objective="val_accuracy", epochs=10,
                              console=Console(file=out, width=200))
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"stopped_by": "deadline", "epochs": 3}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={
        "skipped": "its first epoch needs ~90 s, 20 s are left"}))
    progress.trial_started(0, {"depth": 8}, epochs=4, note="4 epochs fit before the deadline")
    progress.epoch_ended(0, 1, {"val_accuracy": 0.8})
    progress.trial_finished(study, study.trials[0])
    progress.trial_finished(study, study.trials[1])
    lines = out.getvalue().splitlines()
    assert lines[0] == "trial 0  depth=8  (4 epochs fit before the deadline)"
    assert lines[1].startswith("  trial 0 epoch 1/4")
    assert lines[2].endswith("(stopped by the deadline after 3 epochs)")
    assert lines[3].startswith("trial 1 SKIPPED") and lines[3].endswith("(its first epoch needs ~90 s, 20 s are left)")


@pytest.mark.slow
def test_after_kill_9_the_same_command_fails_the_killed_trial_at_once_and_retries_it(capsys, tmp_path):
    """kill -9 mid-trial, then the same command at once (here in process): no waiting for the
    heartbeat's grace period."""
    import signal

    import optuna

    url = f"sqlite:///{tmp_path / 'killed.db'}"
    command = [sys.executable, "-m", "tuner", "search", "--trials", "3", "--epochs", "2", "--batch-size", "32",
               "--recycle-after", "0", "--pruner", "none", "--study", "killed", "--storage", url,
               *(f"--set={item}" for item in TINY["resnet"])]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                             env=user_env())
    try:
        watch_trials(url, "killed", lambda trials: any(t.state.name == "COMPLETE" for t in trials)
                     and any(t.state.name == "RUNNING" and t.intermediate_values for t in trials), process=first)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    before = {t.number: t for t in optuna.load_study(study_name="killed", storage=url).get_trials()}
    (killed,) = [t for t in before.values() if t.state.name == "RUNNING"]
    done = [t for t in before.values() if t.state.name == "COMPLETE"]

    code, out, err = run(capsys, *command[3:])
    assert code == 0, err[-2000:]
    assert f"trial {killed.number} FAIL" in err and "best trial" in out
    after = {t.number: t for t in optuna.load_study(study_name="killed", storage=url).get_trials()}
    assert [t for t in after.values() if t.state.name == "RUNNING"] == []
    assert after[killed.number].state.name == "FAIL"
    (retry,) = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params and retry.state.name == "COMPLETE"
    for trial in done:  # finished before the kill: untouched
        assert after[trial.number].value == trial.value and after[trial.number].user_attrs == trial.user_attrs


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_trial_retried(tmp_path):
    """kill -9 of one of two workers mid-trial: a fresh worker takes its place, the killed trial is
    failed and retried once, and the search ends with exit 0 and its trials, nothing left RUNNING."""
    import signal
    from pathlib import Path

    import optuna

    url = f"sqlite:///{tmp_path / 'killed.db'}"
    command = [sys.executable, "-m", "tuner", "search", "--trials", "5", "--epochs", "3", "--batch-size", "32",
               "--workers", "2", "--recycle-after", "0", "--pruner", "none", "--keep", "0", "--study", "w",
               "--storage", url, *(f"--set={item}" for item in TINY["resnet"])]
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env=user_env())
    def running(trials: list) -> list:
        return [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]

    trials = watch_trials(url, "w", lambda trials: running(trials) and any(t.state.name == "COMPLETE" for t in trials),
                          process=search)
    victim = running(trials)[0] if trials else None
    if victim:
        pid = victim.user_attrs["owner"]["pid"]
        assert "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()  # a worker, not the search
        os.kill(pid, signal.SIGKILL)
    out, err = search.communicate(timeout=300)
    assert victim is not None and search.returncode == 0, err[-2000:]
    assert "was killed (signal 9); a fresh one takes its place" in err
    after = optuna.load_study(study_name="w", storage=url).get_trials()
    assert after[victim.number].state.name == "FAIL"
    (retry,) = [t for t in after if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.params == victim.params and retry.state.name == "COMPLETE"
    assert sorted(t.state.name for t in after) == ["COMPLETE"] * 5 + ["FAIL"]


@pytest.mark.core  # on JAX too: Keras imports TensorFlow there as well, at the first trial
@pytest.mark.slow
def test_ctrl_c_ends_a_search_with_tuners_own_lines_only(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group: the CLI and its worker process):
    exit 130, no traceback, no Optuna warning about the interrupted trial."""
    import signal

    import optuna

    url = f"sqlite:///{tmp_path / 'ctrl-c.db'}"
    command = [sys.executable, "-m", "tuner", "search", "--trials", "3", "--epochs", "50", "--batch-size", "32",
               "--study", "c", "--storage", url, *(f"--set={item}" for item in TINY["resnet"])]
    # SIGINT as a terminal has it, even where this test's own process ignores it (a job started with
    # `&`, some test runners' workers): Python installs its Ctrl-C handler only if SIGINT is not ignored.
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, start_new_session=True, env=user_env(),
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Once a trial is past its first epoch:
    watch_trials(url, "c", lambda trials: any(t.intermediate_values for t in trials), process=search)
    os.killpg(search.pid, signal.SIGINT)
    out, err = search.communicate(timeout=120)
    assert search.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert "Traceback" not in out + err and "[W " not in err and "KeyboardInterrupt" not in err
    assert [word for word in STARTUP_CHATTER if word in out + err] == []  # nor the frameworks' (its worker's too)
    (trial,) = optuna.load_study(study_name="c", storage=url).get_trials()
    assert trial.state.name == "COMPLETE" and trial.user_attrs["stopped_by"] == "interrupt"


def test_read_only_commands_do_not_load_keras(tmp_path):
    """`tuner studies`, `trials`, `best`, `importance`, `spaces` and `--help` answer without importing Keras or
    TensorFlow (seconds saved, and none of their start-up lines)."""
    import optuna

    url = f"sqlite:///{tmp_path / 'store.db'}"
    optuna.create_study(storage=url, study_name="s")
    code = ("import sys\nfrom tuner.cli import main\n"
            f"assert main(['studies', '--storage', {url!r}]) == 0\n"
            f"assert main(['trials', '--study', 's', '--storage', {url!r}]) == 0\n"
            f"assert main(['best', '--study', 's', '--storage', {url!r}]) in (0, 2)\n"
            f"assert main(['importance', '--study', 's', '--storage', {url!r}]) in (0, 2)\n"
            "assert main(['spaces']) == main(['spaces', '--json']) == main(['--help']) == 0\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr[-2000:]


def test_the_cluster_recipes_run_valid_searches():
    """The KubeRay and SLURM recipes in ``deploy/`` give ``tuner search`` flags it takes, with Ray."""
    import yaml

    from tuner.cli import build_parser

    deploy = Path(__file__).parent.parent / "deploy"
    (job,) = [d for d in yaml.safe_load_all((deploy / "kuberay-rayjob.yaml").read_text()) if d["kind"] == "RayJob"]
    script = (deploy / "slurm-ray.sbatch").read_text().replace("\\\n", " ")
    commands = [job["spec"]["entrypoint"], *(line for line in script.splitlines() if line.startswith("tuner search"))]
    assert len(commands) == 2
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.command == "search" and args.ray and args.gpus_per_trial == 0.5 and args.workers > 1
