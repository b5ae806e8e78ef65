"""What a search optimises: one objective or several (a Pareto front), and budgets on the costs.

Keras-free and storage-free: the request checks its objectives and budgets here, the Optuna backend
applies the multi-objective pruning rule from here, and the read-only commands compute fronts here.

Objectives come from the training curve (``val_accuracy``, ``val_loss``: the value at the trial's
best epoch) or from what the trained model costs (``param_count``; ``latency_ms``, the median
batch-1 inference time on this machine's CPU). A search needs one curve objective: it picks the best
epoch, and the pruner follows it.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Hashable
from collections.abc import Sequence

from tuner._names import CURVE_OBJECTIVES
from tuner._names import OBJECTIVES
from tuner.errors import TunerError

DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize", "param_count": "minimize",
              "latency_ms": "minimize"}
# What a cost objective is compared by before training, for the multi-objective pruning rule: the
# parameter count itself, and for latency the forward pass's FLOPs (latency is timed after training).
COST_BEFORE_TRAINING = {"param_count": "param_count", "latency_ms": "flops"}
# The multi-objective pruning rule needs this many cheaper peers at an epoch before it prunes there.
MIN_PEERS = 3
_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_objectives(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"val_accuracy,param_count"`` as a tuple of names, checked: known, distinct, at most three,
    with one training-curve objective among them (the first of them follows the curve)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for name in names:
        if name not in OBJECTIVES:
            raise TunerError(f"unknown objective {name!r}; choose one or more (comma-separated) of: "
                             f"{', '.join(OBJECTIVES)}")
    if not names or len(set(names)) != len(names) or len(names) > 3:
        raise TunerError(f"--objective takes one to three distinct objectives, got {text!r}")
    if not any(name in CURVE_OBJECTIVES for name in names):
        raise TunerError(f"--objective needs one of {', '.join(CURVE_OBJECTIVES)} among its objectives "
                         "(it picks each trial's best epoch)")
    return tuple(names)


def curve_objective(objectives: Sequence[str]) -> str:
    """The objective the training curve follows: best epoch, early stopping, pruning."""
    return next(name for name in objectives if name in CURVE_OBJECTIVES)


def parse_count(text: str | int | None, flag: str = "--max-params") -> int | None:
    """A count as people write it: ``250000``, ``250k``, ``1.5M``, ``2G`` (None stays None)."""
    if text is None or isinstance(text, int):
        count = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]?)\s*", str(text))
        if not match:
            raise TunerError(f"{flag} takes a count such as 250000, 250k or 1.5M, got {text!r}")
        count = int(float(match.group(1)) * _SUFFIXES[match.group(2).lower()])
    if count is not None and count <= 0:
        raise TunerError(f"{flag} must be a positive number, got {text}")
    return count


def sign(objective: str) -> float:
    """+1 for an objective to maximise, -1 for one to minimise: ``sign * value`` is higher-is-better."""
    return 1.0 if DIRECTIONS[objective] == "maximize" else -1.0


def signs(objectives: Sequence[str]) -> tuple[float, ...]:
    """Each objective's ``sign``."""
    return tuple(sign(name) for name in objectives)


def dominates(a: Sequence[float], b: Sequence[float], sign: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    pairs = [(s * x, s * y) for s, x, y in zip(sign, a, b, strict=True)]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_front(points: Sequence[tuple[Hashable, Sequence[float]]], objectives: Sequence[str]) -> list[Hashable]:
    """The keys of the points no other point dominates, in the order given (equal points all stay)."""
    sign = signs(objectives)
    return [key for key, values in points
            if not any(dominates(other, values, sign) for _, other in points)]


def cheaper_peers_better(value: float, step: int, cost: Sequence[float],
                         peers: Sequence[tuple[Sequence[float | None], Sequence[float]]], maximize: bool) -> bool:
    """The multi-objective pruning rule: prune a trial after epoch ``step`` when at least
    ``MIN_PEERS`` other trials that cost no more (every entry of their ``cost`` at most this trial's)
    reached that epoch, and this trial's curve ``value`` there is worse than their median.

    ``peers`` are ``(curve, cost)`` pairs, ``curve[k - 1]`` the value after epoch k (None or NaN:
    not finite, not counted). A trial is only
    ever stopped by cheaper ones, so the cheapest trial so far always trains to the end (the front's
    low-cost end is never pruned), and a costly trial goes on only while it beats most cheaper trials
    at the same epoch: what it must do at the end to be on the front. (Optuna's pruners refuse
    multi-objective studies: ``trial.report`` is single-objective only.)
    """
    values: list[float] = []
    for curve, other in peers:
        reached = curve[step - 1] if len(curve) >= step else None
        if reached is not None and math.isfinite(reached) and all(o <= c for o, c in zip(other, cost, strict=True)):
            values.append(reached)
    if len(values) < MIN_PEERS:
        return False
    median = statistics.median(values)
    return value < median if maximize else value > median
