"""Reliability of the store: concurrent workers, a worker killed mid-trial, and corrupt database files.

Runs the real CLI (``python -m tuner``) in subprocesses with tiny models (ResNet-8, 16 filters, on
digits) and reads the study back with Optuna afterwards. Four parts, each printed as a markdown table:

- ``sqlite``: 4 workers x 5 trials on one SQLite file. Trials by state, COMPLETE count, duplicate
  trial numbers or trial ids, trials with identical params (informational), trials left RUNNING,
  "database is locked" in the CLI's stderr, exit code and wall time.
- ``postgres``: the same on PostgreSQL (a fresh study, deleted afterwards; skipped with the reason
  if the server does not answer).
- ``kill``: kill -9 of a one-worker search while a trial runs, a wait of the heartbeat grace period,
  then the same command again: is the killed trial FAIL, were its params retried once, are the
  COMPLETE trials from before the kill unchanged, is anything left RUNNING.
- ``corrupt``: ``tuner trials`` and ``tuner search`` on a file with SQLite's magic header followed by
  random bytes, and on a text file ``notes.db``: exit code, stderr lines that are not TensorFlow's
  start-up noise, and whether the file's sha256 (and its folder) is unchanged.

    python benchmarks/reliability.py                       # everything, about 7 minutes on 2 CPU cores
    python benchmarks/reliability.py --only sqlite corrupt
    python benchmarks/reliability.py --only postgres --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARTS = ("sqlite", "postgres", "kill", "corrupt")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Tiny trials: ResNet-8 with 16 filters of 3x3 on 8x8 digits, every trial to its last epoch, no models kept.
TINY = ["--space", "resnet", "--dataset", "digits", "--set", "depth=8", "--set", "filters=16",
        "--set", "kernel_size=3", "--pruner", "none", "--keep", "0", "--quiet"]
# TensorFlow/absl start-up chatter on stderr; every other line counts.
NOISE = ("WARNING: All log messages", "I0000", "E0000", "W0000")
POLL_SECONDS = 0.3
Row = list[str]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One finished CLI command."""

    args: list[str]
    code: int | None
    seconds: float
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """stderr lines that are not TensorFlow's start-up noise."""
        return [line for line in self.stderr.splitlines() if line.strip() and not line.startswith(NOISE)]

    def locked(self) -> int:
        return self.stderr.lower().count("database is locked")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner", *args]


def run_cli(args: list[str], cwd: Path, timeout: float) -> Run:
    """Run ``args`` to completion (or ``timeout``: code None) and capture its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        code = None
        stdout = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr = (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
    return Run(args, code, time.perf_counter() - start, stdout, stderr)


def start_cli(args: list[str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start ``args`` in its own process group, output to files (a pipe nobody reads could block it)."""
    out, err = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(args, cwd=cwd, stdout=stdout, stderr=stderr, start_new_session=True)
    return process, out, err


def open_store(url: str) -> Any:
    """Optuna's RDB storage at ``url``, without heartbeats (so reading never fails a stale trial)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def load_trials(store: Any, study: str) -> list[Any]:
    """Every trial row of ``study``, fresh from the database."""
    return store.get_all_trials(store.get_study_id_from_name(study), deepcopy=False)


def by_state(trials: Sequence[Any]) -> str:
    counts = collections.Counter(t.state.name for t in trials)
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"


def duplicates(keys: Sequence[Any]) -> int:
    """Rows beyond the first for every key that occurs more than once."""
    return sum(n - 1 for n in collections.Counter(keys).values() if n > 1)


def params_key(trial: Any) -> tuple:
    return tuple(sorted(trial.params.items()))


def mark(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def postgres_unavailable(url: str) -> str | None:
    """None if the PostgreSQL server at ``url`` answers, else why not."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # no driver, no server, no such database...
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return None


# --- parts 1 and 2: several workers on one study -------------------------------------------------


def concurrent_search(url: str, study: str, workers: int, trials: int, cwd: Path, timeout: float) -> dict[str, str]:
    """``--workers`` processes on one study, then what the study holds."""
    from optuna.trial import TrialState

    from tuner._compat import trial_id_of

    args = cli("search", *TINY, "--workers", str(workers), "--trials", str(trials), "--epochs", "1",
               "--recycle-after", "0", "--storage", url, "--study", study)
    log(f"{workers} workers x {trials // workers} trials on {url.split(':')[0]}: {' '.join(args[1:])}")
    run = run_cli(args, cwd, timeout)
    result = {"exit code (expect 0)": str(run.code), "wall time": f"{run.seconds:.1f} s",
              "database is locked in stderr (expect 0)": str(run.locked()),
              "other stderr lines (expect 0)": str(len(run.error_lines()) - run.locked())}
    try:
        stored = load_trials(open_store(url), study)
    except Exception as err:
        result["trials by state"] = f"cannot read the study: {type(err).__name__}: {err}"
        return result
    ids = [trial_id_of(t) for t in stored]
    result.update({
        "trials by state": by_state(stored),
        f"COMPLETE (expect {trials})": str(sum(t.state == TrialState.COMPLETE for t in stored)),
        "duplicate trial numbers (expect 0)": str(duplicates([t.number for t in stored])),
        "duplicate trial ids (expect 0)": str(duplicates(ids)),
        "trials with identical params (info)": str(duplicates([params_key(t) for t in stored if t.params])),
        "left RUNNING (expect 0)": str(sum(t.state == TrialState.RUNNING for t in stored)),
        "left WAITING (expect 0)": str(sum(t.state == TrialState.WAITING for t in stored)),
    })
    for line in run.error_lines()[:5]:
        log(f"  stderr: {line}")
    return result


def part_sqlite(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    return concurrent_search(f"sqlite:///{tmp}/stress.db", "stress", args.workers, args.workers * args.trials_each,
                             tmp, args.timeout)


def part_postgres(args: argparse.Namespace, tmp: Path) -> dict[str, str] | str:
    import optuna

    reason = postgres_unavailable(args.postgres)
    if reason:
        return f"skipped: no PostgreSQL at {args.postgres} ({reason})"
    study = f"reliability-{uuid.uuid4().hex[:12]}"
    try:
        return concurrent_search(args.postgres, study, args.workers, args.workers * args.trials_each, tmp,
                                 args.timeout)
    finally:
        try:
            optuna.delete_study(study_name=study, storage=args.postgres)
        except KeyError:
            pass  # the search never created it


# --- part 3: kill -9 mid-trial, then the same command --------------------------------------------


def sqlite_has_study(path: Path, study: str) -> bool:
    """Whether the SQLite file holds ``study`` yet (read without creating anything)."""
    if not path.exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT 1 FROM studies WHERE study_name = ?", (study,)).fetchone() is not None
    except sqlite3.Error:
        return False


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> bool:
    """Poll ``condition`` every POLL_SECONDS while ``process`` runs; False if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(POLL_SECONDS)
    return False


def running_mid_trial(trials: Sequence[Any]) -> Any | None:
    """The RUNNING trial once at least one trial is COMPLETE and it has all its params (it is training)."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    wanted = len(complete[0].params)
    running = [t for t in trials if t.state == TrialState.RUNNING and len(t.params) >= wanted]
    return running[0] if running else None


def snapshot(trial: Any) -> tuple:
    return (trial.number, trial.state.name, trial.value, trial.datetime_complete, params_key(trial))


def part_kill(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from optuna.trial import TrialState

    path = tmp / "kill.db"
    url, study = f"sqlite:///{path}", "kill"
    command = cli("search", *TINY, "--trials", str(args.kill_trials), "--epochs", str(args.kill_epochs),
                  "--recycle-after", "0", "--storage", url, "--study", study)
    log(f"kill -9 mid-trial: {' '.join(command[1:])}")
    process, _, err_file = start_cli(command, tmp, "kill-first")
    store = None
    victim = None

    def ready() -> bool:
        nonlocal store, victim
        if store is None:
            if not sqlite_has_study(path, study):
                return False
            store = open_store(url)
        try:
            victim = running_mid_trial(load_trials(store, study))
        except Exception:  # the first worker may still be writing the study's attributes
            return False
        return victim is not None

    reached = wait_until(ready, process, args.timeout)
    kill_time = time.monotonic()
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the CLI and anything it started
    process.wait()
    if not reached or store is None or victim is None:
        return [["reached 1 COMPLETE + 1 RUNNING trial with params", "**NO**",
                 f"exit {process.returncode}; stderr: {err_file.read_text()[-500:]!r}"]]
    before = load_trials(store, study)
    log(f"  killed during trial {victim.number}; before kill: {by_state(before)}")
    complete_before = {t.number: snapshot(t) for t in before if t.state == TrialState.COMPLETE}

    wait = args.grace + 5 - (time.monotonic() - kill_time)
    log(f"  waiting {wait:.0f} s for the heartbeat grace period ({args.grace} s) to pass")
    time.sleep(max(0.0, wait))
    before_rerun = load_trials(store, study)
    log("  the same command again")
    rerun = run_cli(command, tmp, args.timeout)
    after = load_trials(store, study)
    by_number = {t.number: t for t in after}
    killed = by_number.get(victim.number)
    retries = [t for t in after if t.system_attrs.get("failed_trial") == victim.number]
    retry = retries[0] if retries else None
    same_params_later = [t.number for t in after
                         if t.number > victim.number and t.params and params_key(t) == params_key(victim)]
    unchanged = [n for n, snap in complete_before.items() if n in by_number and snapshot(by_number[n]) == snap]
    complete_after = sum(t.state == TrialState.COMPLETE for t in after)
    for line in rerun.error_lines()[:5]:
        log(f"  stderr: {line}")
    return [
        ["trials at the kill", by_state(before), "1+ COMPLETE, 1 RUNNING"],
        ["killed trial", f"#{victim.number}, {len(victim.params)} params, "
                         f"{len(victim.intermediate_values)} epochs reported", "-"],
        ["before the rerun (grace period over)", by_state(before_rerun), "killed trial still RUNNING"],
        ["rerun exit code", str(rerun.code), "0"],
        ["rerun wall time", f"{rerun.seconds:.1f} s", "-"],
        ["rerun stderr lines (not TF noise)", str(len(rerun.error_lines())), "0"],
        ["after the rerun", by_state(after), f"COMPLETE {args.kill_trials}, FAIL 1"],
        ["COMPLETE after the rerun", str(complete_after), str(args.kill_trials)],
        ["killed trial's state", killed.state.name if killed else "missing", "FAIL"],
        ["retries of the killed trial (system attr failed_trial)",
         ", ".join(f"#{t.number} {t.state.name}" for t in retries) or "none", "exactly 1"],
        ["retry has the killed trial's params", mark(retry is not None and params_key(retry) == params_key(victim)),
         "yes"],
        ["later trials with the killed trial's params", ", ".join(f"#{n}" for n in same_params_later) or "none",
         "the retry only"],
        ["COMPLETE trials from before the kill unchanged (number, value, datetime_complete, params)",
         f"{len(unchanged)} of {len(complete_before)}", "all"],
        ["left RUNNING", str(sum(t.state == TrialState.RUNNING for t in after)), "0"],
        ["duplicate trial numbers / trials with identical params (info)",
         f"{duplicates([t.number for t in after])} / {duplicates([params_key(t) for t in after if t.params])}",
         "0 / 1 (the retry)"],
    ]


# --- part 4: files that are not SQLite databases ---------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bad_files(folder: Path, seed: int) -> list[Path]:
    """A file with SQLite's magic header and random bytes after it, and a text file named .db."""
    folder.mkdir()
    corrupt = folder / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + random.Random(seed).randbytes(4096 - 16))
    notes = folder / "notes.db"
    notes.write_text("shopping: milk, eggs\nnot a database\n")
    return [corrupt, notes]


def part_corrupt(args: argparse.Namespace, tmp: Path) -> list[Row]:
    rows = []
    for path in write_bad_files(tmp / "bad", args.seed):
        url = f"sqlite:///{path}"
        for name, command in (("trials", cli("trials", "--study", "x", "--storage", url)),
                              ("search", cli("search", *TINY, "--trials", "1", "--epochs", "1",
                                             "--recycle-after", "0", "--study", "x", "--storage", url))):
            digest, listing = sha256(path), sorted(p.name for p in path.parent.iterdir())
            log(f"{name} on {path.name}")
            run = run_cli(command, tmp, args.timeout)
            lines = run.error_lines()
            new_files = sorted(set(p.name for p in path.parent.iterdir()) - set(listing))
            rows.append([path.name, f"tuner {name}", str(run.code), str(len(lines)),
                         f"`{lines[0][:140]}`" if lines else "-", mark(sha256(path) == digest),
                         ", ".join(new_files) or "none"])
            for line in lines[1:6]:
                log(f"  stderr: {line}")
    return rows


# --- output ----------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def concurrent_table(results: dict[str, dict[str, str] | str], workers: int, trials_each: int) -> str:
    """One column per store; a skipped store is a note under the table."""
    done = {name: r for name, r in results.items() if isinstance(r, dict)}
    notes = [f"{name}: {r}" for name, r in results.items() if isinstance(r, str)]
    text = ""
    if done:
        figures = list(dict.fromkeys(key for r in done.values() for key in r))
        rows = [[figure, *(r.get(figure, "-") for r in done.values())] for figure in figures]
        text = table([f"{workers} workers x {trials_each} trials", *done], rows)
    return "\n\n".join([text, *notes]).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials-each", type=int, default=5, help="trials per worker in sqlite/postgres")
    parser.add_argument("--postgres", default=POSTGRES_URL, help=f"PostgreSQL URL (default {POSTGRES_URL})")
    parser.add_argument("--kill-trials", type=int, default=4)
    parser.add_argument("--kill-epochs", type=int, default=3)
    parser.add_argument("--grace", type=float, default=None,
                        help="seconds to wait after the kill, plus 5 (default storage._store.GRACE_PERIOD)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corrupt file's random bytes")
    parser.add_argument("--timeout", type=float, default=900, help="limit for each CLI command, seconds")
    parser.add_argument("--keep-files", action="store_true", help="keep the temporary folder and print it")
    args = parser.parse_args()
    if args.grace is None:
        from storage._store import GRACE_PERIOD  # read, never changed: the CLI runs with its own

        args.grace = GRACE_PERIOD

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tuner-reliability-"))
    output = []
    try:
        concurrent: dict[str, dict[str, str] | str] = {}
        if "sqlite" in args.only:
            concurrent["SQLite"] = part_sqlite(args, tmp)
        if "postgres" in args.only:
            concurrent["PostgreSQL"] = part_postgres(args, tmp)
        if concurrent:
            output.append(concurrent_table(concurrent, args.workers, args.trials_each))
        if "kill" in args.only:
            output.append(table(["kill -9 of a worker mid-trial, then the same command", "result", "expected"],
                                part_kill(args, tmp)))
        if "corrupt" in args.only:
            output.append(table(["file", "command", "exit code (expect 2)", "stderr lines (expect 1)",
                                 "first stderr line", "sha256 unchanged", "new files beside it"],
                                part_corrupt(args, tmp)))
    finally:
        if args.keep_files:
            log(f"files kept in {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print("\n\n".join(output))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
