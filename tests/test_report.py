"""``tuner report``: one self-contained HTML page per study, drawn by a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.cli import main

PLOTS = ["Optimisation history", "Learning curves (every trial, pruned ones included)", "Hyperparameter importance",
         "Parallel coordinates", "Slices: the objective against each hyperparameter"]
CHECK = Path(__file__).parent.parent / "benchmarks" / "report_check.py"


def test_report_is_one_page_that_opens_offline(capsys, trained_study, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", "--study", "d", "--storage", trained_study, "--output", str(page), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["plots"] == PLOTS and written["bytes"] == page.stat().st_size
    text = page.read_text()
    assert "<h1>Study d</h1>" in text and "test_accuracy" in text and "param depth" in text
    # Self-contained: plotly.js embedded once, no script or stylesheet fetched from anywhere.
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)
    assert text.count('class="plotly-graph-div"') == len(PLOTS)

    assert "Retrained with other seeds" not in text and "Ensembles" not in text

    # What export measured after the search is on the page too.
    import optuna

    study = optuna.load_study(study_name="d", storage=trained_study)
    runs = [{"seed": s, "value": 0.9, "test_accuracy": t, "best_epoch": 2} for s, t in ((1, 0.91), (2, 0.93))]
    study.set_user_attr("retrain_runs", {"1": [{"epochs": 2, "runs": runs, "value": {"mean": 0.9, "std": 0.0},
                                                "test_accuracy": {"mean": 0.92, "std": 0.0141}}]})
    study.set_user_attr("ensembles", [{"trials": [1, 0, 2], "test_accuracy": 0.95, "best_single_test_accuracy": 0.94}])
    assert main(["report", "--study", "d", "--storage", trained_study, "--output", str(page), "--overwrite"]) == 0
    text = page.read_text()
    assert "Retrained with other seeds" in text and "0.9200 ± 0.0141" in text and "0.9100, 0.9300" in text
    assert "<th>1, 0, 2</th><td>0.95</td><td>0.94</td>" in text
    capsys.readouterr()

    assert main(["report", "--study", "d", "--storage", trained_study, "--output", str(page)]) == 2
    assert "exists; choose another --output or pass --overwrite" in capsys.readouterr().err
    assert main(["report", "--study", "d", "--storage", trained_study, "--output", str(tmp_path / "r.pdf")]) == 2
    assert "--output must end in .html" in capsys.readouterr().err and not (tmp_path / "r.pdf").exists()


@pytest.mark.slow
@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no Chromium on PATH (apt-get install chromium)")
def test_report_plots_are_drawn_by_headless_chromium(trained_study, tmp_path):
    result = subprocess.run([sys.executable, str(CHECK), "--study", "d", "--storage", trained_study,
                             "--output", str(tmp_path / "report.html"), "--screenshot", str(tmp_path / "shot.png")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert f"{len(PLOTS)} plots, {len(PLOTS)} drawn by Chromium offline" in result.stdout
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"
