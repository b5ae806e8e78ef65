"""Soak: a long search on PostgreSQL while the database restarts and workers are killed.

Runs the real CLI (``python -m tuner search``, ``reliability.TINY`` trials: ResNet-8 on digits) with
``--workers 8 --trials 200`` twice on fresh studies: once undisturbed, once with the PostgreSQL server
restarted every 60 s (``pg_ctlcluster 15 main restart``) and a random worker process killed with SIGKILL
every 45 s. A killed worker is replaced by the search (up to 3 times each); a command that exits
non-zero all the same is run again, as a supervisor would, until one exits 0. Then the study is read
back:

- stored: the trials that count towards ``--trials`` (COMPLETE and PRUNED), against the 200 asked for;
- killed: FAIL trials whose process died (no error recorded); other FAIL: trials that failed with an
  error (a store error would show here);
- lost: killed trials whose parameters were never retried (the owner rule and the heartbeat retry
  each once: a retry killed in turn is not retried again, and is not counted);
- beyond: counted trials beyond the 200 asked for; retried twice: killed trials retried more than once;
- RUNNING: trials left running after the last command exited.

    python benchmarks/soak.py                          # both runs, about 25 minutes on 2 CPU cores
    python benchmarks/soak.py --trials 40 --workers 4 --only faults
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from reliability import POSTGRES_URL
from reliability import TINY
from reliability import cli
from reliability import load_trials
from reliability import log
from reliability import open_store
from reliability import postgres_unavailable
from reliability import start_cli

RESTART = "pg_ctlcluster 15 main restart"
MAX_COMMANDS = 30  # a search that needs more runs than this is reported as it stands
POLL_SECONDS = 0.5


def worker_pids(parent: int) -> list[int]:
    """The worker processes of the search whose process id is ``parent`` (multiprocessing's spawned
    children, not its resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def soak(url: str, study: str, args: argparse.Namespace, faults: bool, folder: Path) -> dict[str, object]:
    """Run the search to the end (again after each non-zero exit), with or without faults."""
    command = cli("search", *TINY, "--storage", url, "--study", study, "--trials", str(args.trials),
                  "--workers", str(args.workers), "--epochs", "2", "--recycle-after", "0")
    rng = random.Random(0)
    started = time.monotonic()
    next_restart, next_kill = started + args.restart_every, started + args.kill_every
    commands = kills = restarts = 0
    codes = []
    while commands < MAX_COMMANDS:
        commands += 1
        process, _, _ = start_cli(command, folder, f"{'faults' if faults else 'clean'}-{commands}")
        while process.poll() is None:
            now = time.monotonic()
            if faults and now >= next_restart:
                subprocess.run(shlex.split(args.restart), check=True, capture_output=True)
                restarts, next_restart = restarts + 1, now + args.restart_every
                log(f"database restarted ({restarts})")
            if faults and now >= next_kill:
                workers = worker_pids(process.pid)
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills += 1
                    log(f"worker killed ({kills})")
                next_kill = now + args.kill_every
            time.sleep(POLL_SECONDS)
        codes.append(process.returncode)
        log(f"command {commands} exited {process.returncode}")
        if process.returncode == 0:
            break
    wall = time.monotonic() - started
    return {"wall": wall, "commands": commands, "codes": codes, "kills": kills, "restarts": restarts,
            **count(load_trials(open_store(args.postgres), study), args.trials)}


def count(trials: list, asked: int) -> dict[str, int]:
    """The soak's figures from the study's trials (see the module docstring)."""
    uncounted = ("skipped", "rejected")
    stored = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")
              and not any(key in t.user_attrs for key in uncounted)]
    failed = [t for t in trials if t.state.name == "FAIL"]
    killed = [t for t in failed if "error" not in t.user_attrs]
    # Each retry names the trial it repeats last in its history; a retry is not retried again.
    retries = collections.Counter(t.system_attrs["retry_history"][-1] for t in trials
                                  if t.system_attrs.get("retry_history"))
    lost = [t for t in killed if not retries[t.number] and not t.system_attrs.get("retry_history")]
    return {
        "stored": len(stored),
        "killed": len(killed),
        "other FAIL": len(failed) - len(killed),
        "lost": len(lost),
        "beyond": max(len(stored) - asked, 0),
        "retried twice": sum(n - 1 for n in retries.values() if n > 1),
        "RUNNING": sum(t.state.name == "RUNNING" for t in trials),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--restart-every", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=45.0)
    parser.add_argument("--restart", default=RESTART, help="the command that restarts the database server")
    parser.add_argument("--only", choices=("clean", "faults"))
    parser.add_argument("--logs", metavar="DIR", help="keep each command's stdout and stderr in DIR")
    args = parser.parse_args()
    reason = postgres_unavailable(args.postgres)
    if reason:
        print(f"no PostgreSQL server at {args.postgres}: {reason}", file=sys.stderr)
        return 2
    import optuna

    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-soak-") as temporary:
        folder = args.logs or temporary
        Path(folder).mkdir(parents=True, exist_ok=True)
        for faults in (False, True):
            if args.only and args.only != ("faults" if faults else "clean"):
                continue
            study = f"soak-{uuid.uuid4().hex[:8]}"
            log(f"{'with' if faults else 'without'} faults: study {study}")
            row = soak(args.postgres, study, args, faults, Path(folder))
            rows.append((faults, row))
            optuna.delete_study(study_name=study, storage=args.postgres)
    print(f"\n{args.workers} workers, {args.trials} trials, PostgreSQL restarted every {args.restart_every:.0f} s, "
          f"a worker killed every {args.kill_every:.0f} s\n")
    print("| run | wall s | commands (exit codes) | DB restarts | workers killed | stored | killed trials "
          "| other FAIL | lost | beyond --trials | retried twice | RUNNING |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for faults, r in rows:
        codes = ",".join(str(c) for c in r["codes"])  # type: ignore[attr-defined]
        print(f"| {'faults' if faults else 'no faults'} | {r['wall']:.0f} | {r['commands']} ({codes}) | "
              f"{r['restarts']} | {r['kills']} | {r['stored']}/{args.trials} | {r['killed']} | {r['other FAIL']} | "
              f"{r['lost']} | {r['beyond']} | {r['retried twice']} | {r['RUNNING']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
