"""helm lint --strict and deterministic rendering over the matrix of values files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.chart import VALUES_FILES, objects, render
from harness.commands import helm
from harness.paths import CHART, ROOT


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict(values: Path) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_render_is_byte_identical(values: Path) -> None:
    first, second = render(values), render(values)
    assert first == second
    assert len(objects(first)) > 10


def test_matrix_covers_the_presets() -> None:
    assert {p.stem for p in VALUES_FILES} >= {"defaults", "cilogon", "cern", "everything", "dev"}


def test_templates_use_no_lookup_or_randomness() -> None:
    banned = re.compile(r"\blookup\b|\brand[A-Z]\w*|\bgen(CA|PrivateKey|SelfSignedCert)\b|uuidv4")
    hits = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in (CHART / "templates").rglob("*")
        if path.is_file()
        for line in path.read_text().splitlines()
        if banned.search(line)
    ]
    assert hits == []
