"""The ``tuner`` command: a thin shell over the library functions in ``tuner``.

Input mistakes print one line (``tuner: error: ...``) and exit with code 2; a store unreachable for
longer than ``--store-timeout`` exits with 3 (run the command again once it is back); a crashed
worker process exits with 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import NoReturn

from tuner._text import short
from tuner.attributes import OVER_BUDGET_ATTR
from tuner.attributes import REJECTED_ATTR
from tuner.attributes import SKIPPED_ATTR
from tuner.errors import DISTRIBUTION
from tuner.errors import TunerError
from tuner.errors import WorkerFailed
from tuner.training._process import VERBOSE_ENV
from tuner.training._process import load_frameworks
from tuner.training._process import quiet_interrupts
from tuner.training._process import stop_on_signals


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tuner: error: {message} (see `{self.prog} --help`)\n")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _console():
    from rich.console import Console

    # Piped output gets a wide table rather than rich's 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def cmd_search(args: argparse.Namespace) -> int:
    from tuner._request import default_study_name
    from tuner.driver._search import search
    from tuner.results._results import best_trial
    from tuner.training._progress import format_params

    study = args.study or default_study_name(args.space, args.dataset)
    interrupted = False
    try:
        # --timeout counts from the command's start: loading the frameworks and the data included.
        search(**{name: getattr(args, name) for name in request_flags()},
               deadline=None if args.timeout is None else STARTED[0] + args.timeout)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the trial in flight keeps its best epoch (failed if it had none)",
              file=sys.stderr)
    if "," in args.objective:  # several objectives: the front, not one best trial
        args.study, args.pareto = study, True
        print_front(args)
        return 130 if interrupted else 0
    try:
        best = best_trial(study, args.storage)
    except Exception as err:
        if not isinstance(err, TunerError):
            raise
        print(f"study {study}: {err}", file=sys.stderr)
        return 130 if interrupted else 0
    if args.json:
        _print_json(best)
    else:
        print(f"study {study}: best trial {best['number']}  {best['study']['objective']}="
              f"{short(best['value'])}  test_accuracy={short(best.get('test_accuracy'))}")
        print(f"  {format_params(best['params'])}")
        storage_flag = f" --storage {args.storage}" if args.storage else ""
        print(f"  see all trials: tuner trials --study {study}{storage_flag}")
        print(f"  export it:      tuner export --study {study}{storage_flag}{_artifacts_flag(args)} "
              "--output best.keras")
    return 130 if interrupted else 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from rich.table import Table

    from search_spaces import list_spaces
    from search_spaces import space_entry

    spaces = {name: space_entry(name) for name in list_spaces()}
    if args.json:
        _print_json({name: {"description": entry.description,
                            "hyperparameters": {s.name: {"kind": s.kind, **s.config,
                                                         **({"condition": s.condition} if s.condition else {})}
                                                for s in entry.hyperparameters()}}
                     for name, entry in spaces.items()})
        return 0
    console = _console()
    for name, entry in spaces.items():
        table = Table(title=f"{name}: {entry.description}", title_justify="left")
        table.add_column("hyperparameter")
        table.add_column("values")
        for spec in entry.hyperparameters():
            table.add_row(spec.name, spec.describe())
        console.print(table)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tuner.results._results import list_studies

    rows = list_studies(args.storage)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no studies yet: run `tuner search --space resnet`")
        return 0
    table = Table()
    columns = ["name", "space", "dataset", "backend", "objective", "trials", "complete", "pruned",
               "failed", "best_value", "best_trial"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(short(row[c]) for c in columns))
    _console().print(table)
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tuner.results._results import list_trials
    from tuner.training._progress import format_params

    rows = list_trials(args.study, args.storage)
    if args.json:
        _print_json(rows)
        return 0
    table = Table(title=f"study {args.study}", title_justify="left")
    for column in ("#", "state", "value", "test_acc", "epochs", "seconds", "params"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = ", ".join(short(v) for v in row["values"]) if "values" in row else short(row["value"])
        why = next((f" ({key})" for key in (REJECTED_ATTR, SKIPPED_ATTR, OVER_BUDGET_ATTR) if key in row), "")
        table.add_row(str(row["number"]), row["state"] + why, value,
                      short(row.get("test_accuracy")), short(row.get("epochs")),
                      short(row.get("train_seconds")), format_params(row["params"]))
    _console().print(table)
    return 0


def cmd_importance(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tuner.results._results import describe_values
    from tuner.results._results import param_importance

    found = param_importance(args.study, args.storage)
    if args.json:
        _print_json(found)
        return 0
    table = Table(title=f"study {args.study}: hyperparameter importance over {found['finished_trials']} "
                        f"finished trials", title_justify="left")
    table.add_column("hyperparameter")
    table.add_column("importance", justify="right")
    table.add_column(f"values in the best {found['top_trials']} trials", overflow="fold")
    table.add_column(f"best trial ({found['best_trial']})", overflow="fold")
    for row in found["hyperparameters"]:
        table.add_row(row["name"], f"{row['importance']:.3f}", describe_values(row["top_values"]),
                      short(row["best_value"]))
    _console().print(table)
    if found["note"]:
        print(f"note: {found['note']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tuner.results._report import report

    written = report(args.study, args.output, storage=args.storage, overwrite=args.overwrite)
    if args.json:
        _print_json(written)
        return 0
    print(f"wrote {written['output']} ({written['bytes'] / 1e6:.1f} MB, opens offline): "
          f"{', '.join(written['plots'])}")
    return 0


def _artifacts_flag(args: argparse.Namespace) -> str:
    return f" --artifacts {args.artifacts}" if args.artifacts else ""


def stored_model_path(args: argparse.Namespace, trial: dict[str, Any]) -> str | None:
    """Where the trial's stored model file is (a path, or a bucket's URL), if it is still there."""
    from storage import artifacts_location
    from storage import open_artifact_store
    from tuner.models._models import has_file

    artifact_id = trial.get("model_artifact")
    if not artifact_id:
        return None
    location = artifacts_location(args.storage, args.artifacts)
    store = open_artifact_store(args.storage, args.artifacts, create=False)  # its own errors are one line
    try:
        found = has_file(store, artifact_id)
    except Exception as err:  # noqa: BLE001 - a bucket's credentials or network: one line, not a traceback
        raise TunerError(f"cannot read the models at {location}: {type(err).__name__}: {err}") from None
    return f"{location}/{artifact_id}" if found else None


def print_front(args: argparse.Namespace) -> int:
    """``tuner best --pareto``: the front as a table, or JSON."""
    from rich.table import Table

    from tuner.results._results import pareto

    found = pareto(args.study, args.storage)
    if args.json:
        _print_json(found)
        return 0
    kind = "" if found["multi_objective"] else f"{found['objectives'][0]} against size: "
    table = Table(title=f"study {args.study}: {kind}Pareto front, {len(found['front'])} of "
                        f"{found['finished_trials']} finished trials", title_justify="left")
    deploy = ("test_accuracy", "param_count", "model_bytes", "latency_ms")
    columns = ["number", *found["objectives"], *(m for m in deploy if m not in found["objectives"]), "kept"]
    for column in columns:
        table.add_column("trial" if column == "number" else column, justify="right")
    for point in found["front"]:
        table.add_row(*(("yes" if point[c] else "no") if c == "kept" else short(point.get(c)) for c in columns))
    _console().print(table)
    storage_flag = f" --storage {args.storage}" if args.storage else ""
    print(f"export a point: tuner export --study {args.study}{storage_flag}{_artifacts_flag(args)} "
          "--trial N --output model.keras")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tuner.results._results import best_trial
    from tuner.results._results import load_study

    if args.pareto or len(load_study(args.study, args.storage).directions) > 1:
        return print_front(args)
    best = best_trial(args.study, args.storage)
    best["model_file"] = stored_model_path(args, best)
    storage_flag = f" --storage {args.storage}" if args.storage else ""
    best["export_command"] = (f"tuner export --study {args.study}{storage_flag}{_artifacts_flag(args)} "
                              f"--output best.keras" + ("" if best["model_file"] else " --retrain"))
    if args.json:
        _print_json(best)
        return 0
    table = Table(title=f"study {args.study}: best trial {best['number']}", title_justify="left")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in ("test_accuracy", "val_accuracy", "val_loss", "train_accuracy", "train_loss",
                "epochs", "best_epoch", "train_seconds", "param_count", "model_bytes", "latency_ms"):
        table.add_row(key, short(best.get(key)))
    importance = best["importance"] or {}
    for key, value in best["params"].items():
        share = f"  (importance {importance[key]:.2f})" if key in importance else ""
        table.add_row(f"param {key}", short(value) + share)
    for runs in best["retrain_runs"]:
        table.add_row(f"retrained x{len(runs['runs'])}, {runs['epochs']} epochs",
                      f"val {_spread(runs['value'])}, test_accuracy {_spread(runs['test_accuracy'])}")
    table.add_row("model file", best["model_file"] or "not kept (export with --retrain)")
    table.add_row("export with", best["export_command"])
    _console().print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tuner.results._export import export

    description = export(args.study, args.output, trial=args.trial, storage=args.storage,
                         artifacts=args.artifacts, retrain=args.retrain, epochs=args.epochs,
                         overwrite=args.overwrite, ensemble=args.ensemble, seeds=args.seeds, top=args.top,
                         quantize=args.quantize)
    if args.json:
        _print_json(description)
        return 0
    for runs in description.get("retrained_runs", []):
        print(f"trial {runs['trial']} retrained {len(runs['runs'])} times, {runs['epochs']} epochs:")
        for run in runs["runs"]:
            print(f"  seed {run['seed']}: val {short(run['value'])}  test_accuracy {short(run['test_accuracy'])}")
        if len(runs["runs"]) > 1:
            print(f"  mean ± std: val {_spread(runs['value'])}  test_accuracy {_spread(runs['test_accuracy'])}")
    if "ensemble" in description:
        members = ", ".join(str(n) for n in description["ensemble"])
        print(f"wrote {description['output']} ({description['format']}): the average of trials {members} of "
              f"study {description['study']}, test_accuracy={short(description['test_accuracy'])} (best single "
              f"model, trial {description['trial']}: {short(description['best_single_test_accuracy'])})")
        return 0
    what = "retrained, its best epoch" if description["retrained"] else "best epoch"
    if description.get("seed") is not None and len(description["retrained_runs"][0]["runs"]) > 1:
        what = f"retrained, the median run (seed {description['seed']}), its best epoch"
    print(f"wrote {description['output']} ({description['format']}): trial {description['trial']} "
          f"of study {description['study']}, {what}, test_accuracy={short(description['test_accuracy'])}")
    print(f"  space {description['space']}: {json.dumps(description['hyperparameters'])}")
    shape = "x".join(str(v) for v in description["input_shape"])
    fitted = {"crop": "centre-cropped", "pad": "padded"}.get(description.get("resize", ""))
    resize = f" (images resized keeping their aspect ratio, then {fitted})" if fitted else ""
    print(f"  input: {shape} raw pixels{resize}; {description['classes']} classes")
    if "verified" in description:
        v = description["verified"]
        print(f"  verified with {v['runtime']} on {v['test_images']} test images: top-1 agreement "
              f"{v['agreement']:.4f} with the Keras model, test_accuracy {v['test_accuracy']:.4f} (Keras "
              f"{v['keras_test_accuracy']:.4f}); {v['bytes'] / 1e6:.2f} MB; batch-1 latency {v['latency_ms']:.3g} ms")
    if "rebuild" in description:
        print("  rebuild the model, then load the weights:\n" + description["rebuild"])
    elif "verified" in description:
        from tuner.models._deploy import LOAD_HINTS

        print(f"  load it with: {LOAD_HINTS[Path(description['output']).suffix]}")
    else:
        print("  load it with: keras.saving.load_model(...) (takes raw pixels; normalisation is inside)")
    return 0


def _spread(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from storage import artifacts_location
    from storage import object_store
    from storage import open_artifact_store
    from storage import open_storage
    from storage import storage_url

    store = open_storage(args.storage, must_exist=True)
    location = artifacts_location(args.storage, args.artifacts)
    shown = object_store(args.artifacts) or Path(location).is_dir()
    artifact_store = open_artifact_store(args.storage, args.artifacts, create=False) if shown else None
    print(f"optuna-dashboard for {storage_url(args.storage)} at http://{args.host}:{args.port}/ "
          f"(artifacts: {location if shown else 'none'}); Ctrl-C stops it", flush=True)
    run_server(store, host=args.host, port=args.port, artifact_store=artifact_store)
    return 0


def installed_version() -> str:
    """The installed distribution's version ("unknown" in a checkout that was not installed)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def request_flags() -> dict[str, dict[str, Any]]:
    """The options of ``SearchRequest`` that ``tuner search`` takes, by field name: the keywords of
    their ``add_argument`` (the flag's name under ``"flag"``), as the request declares them."""
    from tuner._request import SearchRequest

    flags = {}
    for field in dataclasses.fields(SearchRequest):
        if field.metadata["flag"] is not None:
            spec = {"flag": "--" + field.name.replace("_", "-"), "help": field.metadata["help"],
                    **field.metadata["flag"]}
            spec["default"] = spec.pop("cli_default", field.default)
            flags[field.name] = spec
    return flags


def options_table() -> str:
    """``tuner search``'s options as a Markdown table (option, meaning), from ``request_flags``: the
    CLI reference's table (``docs/hooks.py`` puts it on the reference page)."""
    rows = ["| option | meaning |", "|---|---|"]
    for spec in request_flags().values():
        value = spec.get("metavar") or "|".join(spec.get("choices") or ()) or spec["flag"][2:].upper()
        value = f"[{value}]" if spec.get("nargs") == "?" else value  # the value may be left out
        flag = {"store_true": spec["flag"], "store_false": spec["flag"],
                argparse.BooleanOptionalAction: f"{spec['flag']}, --no-{spec['flag'][2:]}"}.get(
                    spec.get("action"), f"{spec['flag']} {value}")
        cell = flag.replace("|", "\\|"), spec["help"].replace("|", "\\|")  # a | inside a cell
        rows.append(f"| `{cell[0]}` | {cell[1]} |")
    return "\n".join(rows)


def add_request_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add the flags of ``SearchRequest``'s options ``names`` (default: all) to ``parser``."""
    for name, spec in request_flags().items():
        if names is None or name in names:
            kwargs = dict(spec)
            parser.add_argument(kwargs.pop("flag"), dest=name, **kwargs)


def build_parser() -> ArgumentParser:

    parser = ArgumentParser(prog="tuner", description="Hyperparameter search for Keras CNN classifiers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}",
                        help=f"print the version of {DISTRIBUTION} and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=ArgumentParser)

    def add(name: str, help: str, func) -> ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    def storage_option(sub: ArgumentParser) -> None:
        add_request_flags(sub, ["storage"])

    def artifacts_option(sub: ArgumentParser) -> None:
        add_request_flags(sub, ["artifacts"])

    def json_option(sub: ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def verbose_option(sub: ArgumentParser) -> None:
        sub.add_argument("--verbose", action="store_true",
                         help=f"show TensorFlow's, absl's and CUDA's start-up lines (or set {VERBOSE_ENV}=1)")

    s = add("search", "run (or continue) a search and store every trial", cmd_search)
    add_request_flags(s)  # every option of SearchRequest, as it declares it
    json_option(s)
    verbose_option(s)

    sp = add("spaces", "list the search spaces and their hyperparameters", cmd_spaces)
    json_option(sp)

    st = add("studies", "list the studies in the store", cmd_studies)
    storage_option(st)
    json_option(st)

    for name, help, func in (("trials", "list the trials of a study", cmd_trials),
                             ("best", "show the best trial of a study and where its model is", cmd_best),
                             ("importance", "how much each hyperparameter mattered, and its best values",
                              cmd_importance),
                             ("report", "write one self-contained HTML page about a study (plots included)",
                              cmd_report),
                             ("export", "write a trial's model as a file plain Keras loads", cmd_export)):
        sub = add(name, help, func)
        sub.add_argument("--study", metavar="NAME", required=True, help="study name")
        storage_option(sub)
        json_option(sub)
        if name in ("best", "export"):
            artifacts_option(sub)
    commands.choices["best"].add_argument(
        "--pareto", action="store_true",
        help="the Pareto front instead: of the study's objectives, or of its objective against param_count "
             "and latency_ms (default for a multi-objective study)")
    e = commands.choices["export"]
    e.add_argument("--output", metavar="PATH", required=True,
                   help="best.keras (whole model), best.weights.h5 (weights), a folder (SavedModel), or for "
                        "deployment best.tflite (LiteRT) or best.onnx, each verified by its runtime")
    e.add_argument("--trial", type=int, metavar="N",
                   help="trial number (default: the best trial; of a multi-objective study, a point of its front)")
    e.add_argument("--retrain", action="store_true",
                   help="train the configuration again from scratch as the search did (its seed, recipe and "
                        "splits), then export its best epoch")
    e.add_argument("--epochs", type=int, help="epochs for --retrain (default: the study's --epochs)")
    e.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="with --retrain: train K times with different seeds, print each run and mean ± std, record "
                        "them on the study, export the median run (default 1)")
    e.add_argument("--top", type=int, metavar="N",
                   help="with --retrain: retrain the N best trials so and export the best by mean validation score")
    e.add_argument("--ensemble", type=int, metavar="K",
                   help="one model averaging the class probabilities of the K best kept models (search with "
                        "--keep K or more)")
    e.add_argument("--quantize", choices=("float16", "int8"),
                   help="with a .tflite --output: float16 weights, or int8 calibrated on 200 training images")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    verbose_option(e)
    r = commands.choices["report"]
    r.add_argument("--output", metavar="PATH", required=True, help="the page to write, e.g. report.html")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    d = add("dashboard", "open the store in optuna-dashboard, with the stored models", cmd_dashboard)
    storage_option(d)
    artifacts_option(d)
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    d.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    return parser


STARTED = [0.0]  # when main() began: a search's --timeout counts from there
# Commands that load Keras: they do it first, with the frameworks' start-up lines filtered out.
NEEDS_FRAMEWORKS = (cmd_search, cmd_export)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tuner`` command with ``argv``; returns the exit code."""
    STARTED[0] = time.time()
    stop_on_signals()
    quiet_interrupts()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines replace Optuna's
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # for the worker processes too
    try:
        if args.func in NEEDS_FRAMEWORKS:
            load_frameworks()
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except WorkerFailed as err:  # its traceback is printed above, by the worker
        print(f"tuner: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if not isinstance(err, TunerError):
            raise
        print(f"tuner: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
