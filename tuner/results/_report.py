"""``tuner.report``: one self-contained HTML page about a study, for a colleague without the store.

The plots are Optuna's own (``optuna.visualization``, plotly); the page embeds plotly.js once, so it
opens offline, from a file, with no server. Nothing here imports Keras.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.attributes import ENSEMBLES_ATTR
from tuner.attributes import RETRAIN_ATTR
from tuner.errors import TunerError
from tuner.errors import install_hint
from tuner.models._models import check_output
from tuner.models._models import ranked_trials
from tuner.results._results import describe_values
from tuner.results._results import importance_of
from tuner.results._results import load_study
from tuner.results._results import pareto_of
from tuner.results._results import trial_record

# What the best trial's table shows, in order, when the trial recorded it.
BEST_FIELDS = ("value", "test_accuracy", "val_accuracy", "val_loss", "epochs", "best_epoch", "train_seconds",
               "param_count", "stopped_by")


def _plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise TunerError(f"tuner report needs plotly: {install_hint('report')}") from None


def report_figures(study: optuna.Study, objective: str) -> list[tuple[str, Any]]:
    """The page's plots, titled, in order: history, learning curves, importance, parallel
    coordinates, slices, and the Pareto front of a multi-objective study."""
    vis = optuna.visualization
    multi = len(study.directions) > 1
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[], Any]]] = []
    if multi:
        plots.append(("Pareto front", lambda: vis.plot_pareto_front(study, target_names=study.metric_names)))
    else:
        plots += [
            ("Optimisation history", lambda: vis.plot_optimization_history(study, target_name=objective)),
            ("Learning curves (every trial, pruned ones included)",
             lambda: vis.plot_intermediate_values(study)),
        ]
        if len(finished) >= 2:
            plots.append(("Hyperparameter importance", lambda: vis.plot_param_importances(study)))
        plots += [
            ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study, target_name=objective)),
            ("Slices: the objective against each hyperparameter",
             lambda: vis.plot_slice(study, target_name=objective)),
        ]
    return [(title, make()) for title, make in plots]


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...] = ()) -> str:
    """An HTML table; each row's first cell is its heading."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr><th>" + html.escape(str(row[0])) + "</th>"
                   + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row[1:]) + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "-" if value is None else str(value)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #f4f4f4; font-weight: 600; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.note { color: #666; font-size: 0.9em; }
"""


def _robustness(study: optuna.Study) -> list[str]:
    """Sections for what ``tuner export`` measured after the search, when it did: retrains with
    several seeds (``--retrain --seeds``) and averaged models (``--ensemble``)."""
    parts: list[str] = []
    rows: list[tuple[Any, ...]]
    retrains = study.user_attrs.get(RETRAIN_ATTR, {})
    if retrains:
        rows = [(f"trial {number}", summary["epochs"], len(summary["runs"]),
                 f"{summary['value']['mean']:.4f} ± {summary['value']['std']:.4f}",
                 f"{summary['test_accuracy']['mean']:.4f} ± {summary['test_accuracy']['std']:.4f}",
                 ", ".join(f"{run['test_accuracy']:.4f}" for run in summary["runs"]))
                for number, summaries in sorted(retrains.items(), key=lambda kv: int(kv[0]))
                for summary in summaries]
        parts += ["<h2>Retrained with other seeds</h2>",
                  _table(rows, ("trial", "epochs", "runs", "objective mean ± std", "test accuracy mean ± std",
                                "test accuracy of each run"))]
    ensembles = study.user_attrs.get(ENSEMBLES_ATTR, [])
    if ensembles:
        rows = [(", ".join(str(n) for n in e["trials"]), e["test_accuracy"], e["best_single_test_accuracy"])
                for e in ensembles]
        parts += ["<h2>Ensembles (averaged probabilities)</h2>",
                  _table(rows, ("trials averaged", "test accuracy", "best single model's test accuracy"))]
    return parts


def render_report(study: optuna.Study) -> tuple[str, list[str]]:
    """The page's HTML, and the titles of the plots it holds."""
    _plotly()
    attrs = study.user_attrs
    objective = attrs.get("objective", "objective")
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    summary = [("space", attrs.get("space")), ("dataset", attrs.get("dataset")),
               ("backend", attrs.get("backend")), ("objective", objective),
               ("direction", ", ".join(d.name.lower() for d in study.directions)),
               ("trials", ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n))]
    parts = [f"<h1>Study {html.escape(study.study_name)}</h1>", _table(summary)]
    ranked = ranked_trials(study)
    if len(study.directions) > 1:
        found_front = pareto_of(study)
        objectives = found_front["objectives"]
        columns = ("trial", *objectives,
                   *(m for m in ("test_accuracy", "param_count", "model_bytes", "latency_ms") if m not in objectives),
                   "kept")
        parts += [f"<h2>Pareto front: {len(found_front['front'])} trials</h2>",
                  _table([tuple(point.get("number" if c == "trial" else c) for c in columns)
                          for point in found_front["front"]], columns)]
    elif ranked:
        best = trial_record(ranked[0])
        parts += [f"<h2>Best trial: {best['number']}</h2>",
                  _table([(k, best.get(k)) for k in BEST_FIELDS if best.get(k) is not None]
                         + [(f"param {k}", v) for k, v in best["params"].items()])]
        found = importance_of(study)
        if found:
            parts += ["<h2>Hyperparameter importance</h2>",
                      _table([(row["name"], f"{row['importance']:.3f}", describe_values(row["top_values"]),
                               row["best_value"]) for row in found["hyperparameters"]],
                             ("hyperparameter", "importance", f"values in the best {found['top_trials']} trials",
                              f"best trial ({found['best_trial']})"))]
            if found["note"]:
                parts.append(f"<p class='note'>{html.escape(found['note'])}</p>")
    parts += _robustness(study)
    figures = report_figures(study, objective)
    for i, (title, figure) in enumerate(figures):
        parts += [f"<h2>{html.escape(title)}</h2>",
                  figure.to_html(full_html=False, include_plotlyjs=i == 0, default_width="100%")]
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>tuner: {html.escape(study.study_name)}"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return page, [title for title, _ in figures]


def report(study: str, output: str, *, storage: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``output`` (``*.html``), one self-contained page about ``study``: its summary, best trial
    and importances, its retrains and ensembles when there are, and Optuna's plots of it. Returns the
    path, its size and the plots' titles."""
    if not output.endswith((".html", ".htm")):
        raise TunerError(f"--output must end in .html, got {output!r}")
    out = check_output(output, overwrite)
    loaded = load_study(study, storage)
    if not loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TunerError(f"study {study!r} has no finished trial yet; nothing to report")
    page, plots = render_report(loaded)
    out.write_text(page, encoding="utf-8")
    return {"study": study, "output": str(out), "bytes": out.stat().st_size, "plots": plots}
