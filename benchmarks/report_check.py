"""Open a ``tuner report`` page in headless Chromium, offline, and check that every plot rendered.

Writes the report of a study, loads it from the file in Chromium (no network: the page embeds
plotly.js), reads the page back after its scripts ran, and counts the plots plotly.js drew (it marks
each drawn plot ``js-plotly-plot``); with ``--screenshot`` it also saves a PNG of the page. Exit 0
when every plot the report holds was drawn, 1 otherwise.

    apt-get install chromium        # Debian's package; any Chromium or Chrome on PATH will do
    python benchmarks/report_check.py --study resnet-digits --output report.html --screenshot report.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The first Chromium or Chrome on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def headless(browser: str, page: Path, *flags: str) -> subprocess.CompletedProcess:
    """Run ``browser`` headless on ``page`` with a throwaway profile; scripts get 20 s of virtual time."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", *flags, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)


def drawn_plots(browser: str, page: Path) -> int:
    """How many plots plotly.js drew on ``page``, read from the DOM after its scripts ran."""
    dom = headless(browser, page, "--dump-dom").stdout
    return len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--output", default="report.html")
    parser.add_argument("--screenshot", default=None, help="also save the page as this PNG")
    args = parser.parse_args()

    from tuner import report

    browser = find_browser()
    if browser is None:
        print("no Chromium or Chrome on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    written = report(args.study, args.output, storage=args.storage, overwrite=True)
    drawn = drawn_plots(browser, Path(written["output"]))
    print(f"{written['output']}: {written['bytes'] / 1e6:.1f} MB, {len(written['plots'])} plots, "
          f"{drawn} drawn by Chromium offline ({browser})")
    if args.screenshot:
        headless(browser, Path(written["output"]), "--window-size=1200,3000", f"--screenshot={args.screenshot}")
        print(f"screenshot: {args.screenshot}")
    return 0 if drawn == len(written["plots"]) else 1


if __name__ == "__main__":
    sys.exit(main())
