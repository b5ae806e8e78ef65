"""Who runs a trial: recovery from a killed search without waiting for the heartbeat's grace period.

Every RUNNING trial records its owner: host name, process id and the process's start time (which
tells a live process from a later one that reuses its id). A search's store (``OwnedStorage``)
writes it with each trial it creates, and before it takes a queued trial it claims it (a system
attribute ``claim:HOST:PID`` holding the same record), so a process that dies, or loses its store,
between taking a trial and recording itself as its owner leaves its claim. A trial whose owner (or,
with none recorded, every claimant) ran on this host and no longer exists is failed at once, and
its parameters retried once (Optuna's ``RetryHeartbeatStaleTrialCallback``, as the heartbeat does
it). Trials owned by other hosts, or stored before owners were recorded, keep the heartbeat rule:
FAIL after ``GRACE_PERIOD`` s of silence.
"""

from __future__ import annotations

import copy
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from storage._resilient import ResilientStorage
from tuner._compat import TemplatedTrials

OWNER_ATTR = "owner"
CLAIM_PREFIX = "claim:"


def process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), "" where the system
    does not say (not Linux), or None if no such process exists or it has ended and waits for its
    parent to read its exit status (a zombie: killed, it runs no trial any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        fields = stat.rsplit(")", 1)[1].split()  # from field 3; the name before ")" may hold spaces
        return None if fields[0] in ("Z", "X") else fields[19]  # its state; field 22, its start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # exists, someone else's
        pass
    return ""


def this_process() -> dict[str, Any]:
    """The owner record of the calling process, with the GPUs it sees where it was given some
    (``CUDA_VISIBLE_DEVICES``: by ``--gpus``, or by Ray)."""
    pid = os.getpid()
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"host": socket.gethostname(), "pid": pid, "started": process_started(pid) or "",
            **({"gpus": gpus} if gpus is not None else {})}


def record_owner(trial: optuna.Trial) -> None:
    """Mark ``trial`` as run by this process."""
    trial.set_user_attr(OWNER_ATTR, this_process())


def claimants(trial: optuna.trial.FrozenTrial) -> list[Any]:
    """Who may be running ``trial``: its owner where one is recorded, else the processes that claimed
    it (a claim withdrawn by a process that lost the race for it is None)."""
    if OWNER_ATTR in trial.user_attrs:
        return [trial.user_attrs[OWNER_ATTR]]
    return [value for key, value in trial.system_attrs.items() if key.startswith(CLAIM_PREFIX) and value]


class RetryOnce(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a new WAITING trial with its parameters), once, without its
    owner and claims: the retry is nobody's until a process takes it, and must not look orphaned, or
    owned by the dead process, before then."""

    def __init__(self) -> None:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=1)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != OWNER_ATTR}
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(CLAIM_PREFIX)}
        super().__call__(study, trial)


class OwnedStorage(TemplatedTrials, ResilientStorage):
    """A search's store: each trial it creates is written with its owner, and each queued trial it
    takes is claimed first (see the module docstring)."""

    def new_trial_template(self) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={OWNER_ATTR: this_process()})

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        owner = this_process()  # taking a queued trial (``Study.ask``): claimed first
        claim = f"{CLAIM_PREFIX}{owner['host']}:{owner['pid']}"
        self.set_trial_system_attr(trial_id, claim, owner)
        taken = super().set_trial_state_values(trial_id, state, values)
        if not taken:  # another process took it first: withdrawn, so its death is not hidden by ours
            self.set_trial_system_attr(trial_id, claim, None)
        return taken


def owner_is_gone(owner: Any, host: str) -> bool:
    """Whether ``owner`` ran on ``host`` (this machine) and that process no longer exists."""
    if not isinstance(owner, dict) or owner.get("host") != host:
        return False
    started = process_started(int(owner.get("pid", -1)))
    return started is None or bool(started and owner.get("started") and started != owner["started"])


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail each RUNNING trial of ``study`` whose owner (with none recorded, every claimant) ran on this
    host and is gone, and enqueue its parameters once more; returns the numbers of the trials failed.
    Safe to run in several processes at once: only the one whose update lands retries the trial."""
    host = socket.gethostname()
    failed = []
    retry = RetryOnce()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        running = claimants(trial)
        if not running or not all(owner_is_gone(owner, host) for owner in running):
            continue
        try:
            ended = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another process failed (or its owner ended) it first
            continue
        failed.append(trial.number)
        retry(study, ended)
    return failed
