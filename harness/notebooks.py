"""The example notebooks are written as scripts (examples/*/*.py, in the "percent" format that
editors and jupytext read) and turned into .ipynb here, so that the script and the notebook are
the same analysis. A test checks that each committed notebook is what this makes of its script.

Cells start at a line `# %%`:
- `# %% [markdown]`: a text cell, from the comment lines below it (without their `# `);
- `# %% [notebook]`: a code cell whose first line is the script's guard (`if ...:`); the
  notebook gets the block under it, dedented;
- `# %% [script]`: only in the script (its command line), left out of the notebook;
- `# %%`: a code cell.

    python -m harness.notebooks examples/agc/ttbar.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

MARKER = "# %%"
KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def cells(script: str) -> list[dict[str, Any]]:
    chunks: list[tuple[str, list[str]]] = []
    for line in script.splitlines():
        if line.startswith(MARKER):
            chunks.append((line[len(MARKER) :].strip(), []))
        elif chunks:
            chunks[-1][1].append(line)
    made = []
    for kind, lines in chunks:
        text = "\n".join(lines).strip("\n")
        if kind == "[script]":
            continue
        if kind == "[markdown]":
            source = "\n".join(
                line.removeprefix("#").removeprefix(" ") for line in text.split("\n")
            )
            made.append({"cell_type": "markdown", "metadata": {}, "source": source})
            continue
        if kind == "[notebook]":
            guard, _, body = text.partition("\n")
            if not guard.startswith("if "):
                raise ValueError(
                    f"a [notebook] cell starts with its guard (if ...:), not {guard!r}"
                )
            text = textwrap.dedent(body).strip("\n")
        elif kind:
            raise ValueError(
                f"unknown cell kind {kind!r}: [markdown], [notebook], [script] or none"
            )
        made.append(
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": text,
            }
        )
    for cell in made:  # nbformat keeps a source as its lines
        cell["source"] = cell["source"].splitlines(keepends=True)
    return made


def notebook(script: str) -> str:
    document = {
        "cells": cells(script),
        "metadata": {
            "kernelspec": KERNEL,
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for number, cell in enumerate(document["cells"]):
        cell["id"] = f"cell-{number}"
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="example scripts -> notebooks")
    parser.add_argument("scripts", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if a notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for script in args.scripts:
        target = script.with_suffix(".ipynb")
        made = notebook(script.read_text())
        if args.check:
            if not target.is_file() or target.read_text() != made:
                stale.append(str(target))
        else:
            target.write_text(made)
    if stale:
        print(f"stale: {', '.join(stale)}: run python -m harness.notebooks", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
