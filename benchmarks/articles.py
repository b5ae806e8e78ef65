"""What the articles' models score here: each command of the docs' table of the articles' models
(``docs/reference/spaces.md``), run as documented on Fashion-MNIST for a stated number of epochs.

The commands are read from the table itself, so the figures are those of exactly the commands a
reader copies ("DATA" becomes the dataset; a row that says "the same with" adds its flags to the
row above). Each runs alone through the real CLI (``--trials 1 --patience 0 --epochs E``, seed 0),
one after another, scored on the test split; ``--train-size N`` takes the race's stratified subset.

    python benchmarks/articles.py --epochs 2
    python benchmarks/articles.py --epochs 10 --train-size 5000
"""

from __future__ import annotations

import argparse
import re
import shlex
import tempfile
from pathlib import Path

from portfolio import trained
from race import subset_dataset

TABLE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "spaces.md"
# The flags of a documented command that this script sets itself.
OWN_FLAGS = {"--dataset", "--trials"}


def documented_models(table: Path = TABLE) -> list[dict]:
    """The table's rows: article, model, parameters, and the command's space, ``--set`` values and
    other flags."""
    rows, previous = [], None
    section = table.read_text().split("## The articles' models", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`0"):
            continue
        code = re.findall(r"`([^`]*)`", cells[2])
        words = shlex.split(code[0])
        if cells[2].startswith("the same with"):
            words = previous + words
        previous = words if words[:2] == ["tuner", "search"] else previous
        values: dict[str, str] = {}  # a later --set of the same name wins, as "the same with" means
        flags, space = [], None
        for flag, value in zip(words[2::2], words[3::2], strict=True):  # after "tuner search"
            if flag == "--space":
                space = value
            elif flag == "--set":
                values[value.split("=")[0]] = value
            elif flag not in OWN_FLAGS:
                flags += [flag, value]
        rows.append({"article": cells[0], "model": re.split(r"[:,]| with ", cells[1])[0], "space": space,
                     "values": list(values.values()), "flags": tuple(flags),
                     "parameters": int(cells[3].replace(",", ""))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs each model trains (default 2)")
    parser.add_argument("--train-size", type=int, help="a stratified subset of this many training images")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--only", nargs="+", help="run only the models whose name starts with these")
    args = parser.parse_args()
    models = [m for m in documented_models() if not args.only or m["model"].startswith(tuple(args.only))]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dataset = subset_dataset(args.dataset, args.train_size, folder) if args.train_size else args.dataset
        for model in models:
            result = trained(dataset, model["values"], ["--epochs", str(args.epochs)], 0, folder,
                             space=model["space"], flags=model["flags"])
            lines.append(f"| {model['article']} | {model['model']} | {result['epochs']} | "
                         f"{result['validation']:.4f} | {result['test']:.4f} | {result['seconds']:.0f} |")
            print(lines[-1], flush=True)
    data = f"{args.dataset}, {args.train_size:,} training images" if args.train_size else args.dataset
    print(f"\n{data}, {args.epochs} epochs each, seed 0\n")
    print("| article | model | epochs | validation | test | seconds |\n|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
