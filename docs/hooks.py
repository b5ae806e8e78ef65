"""MkDocs hook: the reference pages' generated parts, made from the code that declares them.

``<!-- generated: search-options -->`` becomes ``tuner search``'s options table
(``tuner.cli.options_table``: each option as ``SearchRequest`` declares it);
``<!-- generated: spaces -->`` one table per registered search space, from its declarations;
``<!-- generated: study-attributes -->`` and ``<!-- generated: trial-attributes -->`` the attributes
``tuner.attributes`` declares.
"""

from __future__ import annotations

from typing import Any


def spaces_tables() -> str:
    """Every registered space's hyperparameters, as ``tuner spaces`` lists them, in Markdown."""
    from search_spaces import list_spaces
    from search_spaces import space_entry

    parts = []
    for name in list_spaces():
        entry = space_entry(name)
        rows = [f"### `{name}`", "", entry.description, "", "| hyperparameter | values |", "|---|---|"]
        for spec in entry.hyperparameters():
            rows.append(f"| `{spec.name}` | {spec.describe().replace('|', chr(92) + '|')} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def attributes_table(on: str) -> str:
    """The attributes tuner stores on a study or a trial (``on``), with what each holds."""
    from tuner.attributes import ATTRIBUTES

    rows = ["| attribute | what it holds |", "|---|---|"]
    rows += [f"| `{a.name}` | {a.meaning} |" for a in ATTRIBUTES.values() if a.on == on]
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    from tuner.cli import options_table

    generated = {"search-options": options_table, "spaces": spaces_tables,
                 "study-attributes": lambda: attributes_table("study"),
                 "trial-attributes": lambda: attributes_table("trial")}
    for name, make in generated.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
