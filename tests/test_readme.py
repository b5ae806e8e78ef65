"""The README's commands run as written, their budgets made tiny, in a fresh folder: what the front page
shows a newcomer works (``pip``, ``mkdocs`` and the long-running ``tuner dashboard`` aside)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from PIL import Image

README = Path(__file__).parent.parent / "README.md"
# What a command's budget becomes here: seconds, trials, epochs.
SMALL = {"--timeout": "35", "--trials": "3", "--epochs": "1"}


def readme_commands() -> list[list[str]]:
    """Every ``tuner`` command of the README's bash blocks, as arguments (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            for part in line.split("  #")[0].split("&&"):
                words = shlex.split(part)
                if words[:1] == ["tuner"] and words[1:2] != ["dashboard"]:
                    commands.append(words[1:])
    return commands


def small(args: list[str]) -> list[str]:
    """``args`` with a tiny budget, a named dataset replaced by ``digits`` (a folder stays; a study
    named after Fashion-MNIST is named after digits) and, for a search, the space's smallest model."""
    args = [SMALL.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    args = ["digits" if i and args[i - 1] == "--dataset" and not a.endswith("/")
            else a.replace("fashion_mnist", "digits") for i, a in enumerate(args)]  # study names follow
    if args[0] != "search":
        return args
    space = args[args.index("--space") + 1] if "--space" in args else "resnet"
    budget = [word for flag in ("--trials", "--epochs") if flag not in args for word in (flag, SMALL[flag])]
    return [*args, *budget, *(f"--set={item}" for item in TINY[space])]


def photos(root: Path) -> None:
    """A small image folder, as ``--dataset photos/`` expects: two classes of 24 pictures."""
    for label, colour in (("cats", (200, 40, 40)), ("dogs", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for i in range(24):
            Image.new("RGB", (20 + i, 16), (colour[0], (9 * i) % 256, colour[2])).save(root / label / f"{i}.png")


@pytest.mark.slow
def test_the_readmes_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    photos(tmp_path / "photos")
    commands = readme_commands()
    assert commands[0][:2] == ["search", "--space"] and len(commands) >= 8  # the quickstart comes first
    for args in commands:
        if "--output" in args and args[args.index("--output") + 1].endswith(".tflite") \
                and importlib.util.find_spec("ai_edge_litert") is None:
            continue  # the export extra
        # Each in its own process, as a user types them (tuner's CLI runs one command per process).
        ran = subprocess.run([sys.executable, "-m", "tuner", *small(args)], capture_output=True, text=True,
                             timeout=300)
        assert ran.returncode == 0, (args, ran.stderr[-2000:])
    # The Python tour, its search made as small.
    tour = re.search(r"```python\n(import tuner\n.*?)```", README.read_text(), flags=re.S).group(1)
    exec(tour.replace("timeout=120", "timeout=20, trials=1, epochs=1, overrides=['depth=8', 'filters=16']"), {})
    assert (tmp_path / "demo.keras").exists()
