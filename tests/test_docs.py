"""The documentation site: it builds with warnings as errors, its reference pages hold what the code
declares, and its pages render in headless Chromium."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                reason="MkDocs not installed (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_the_reference_pages_hold_every_option_and_hyperparameter_the_code_declares(site):
    import tuner
    from search_spaces import list_spaces
    from search_spaces import space_entry
    from tuner.cli import request_flags

    cli = (site / "reference" / "cli" / "index.html").read_text()
    for spec in request_flags().values():
        assert spec["flag"] in cli, spec["flag"]
    python = (site / "reference" / "python" / "index.html").read_text()
    for field in dataclasses.fields(tuner.SearchRequest)[2:]:
        assert f"{field.name}=" in python, field.name
    spaces = (site / "reference" / "spaces" / "index.html").read_text()
    for name in list_spaces():
        assert all(f"<code>{spec.name}</code>" in spaces for spec in space_entry(name).hyperparameters()), name


def test_pages_render_in_headless_chromium(site):
    check = runpy.run_path(str(ROOT / "benchmarks" / "report_check.py"))  # its browser helpers
    browser = check["find_browser"]()
    if browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    for page, heading in (("index.html", "tuner"), ("getting-started/index.html", "Getting started"),
                          ("reference/cli/index.html", "CLI reference")):
        dom = check["headless"](browser, site / page, "--dump-dom").stdout
        assert f">{heading}<" in dom or f">{heading}</h1>" in dom, (page, dom[:500])
