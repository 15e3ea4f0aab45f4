"""The facility's examples (examples/ of the repository) as modules, for the tests and the
benchmarks that run the same analysis as the notebook does."""

from __future__ import annotations

from types import ModuleType

from harness.modules import module_from_file
from harness.paths import ROOT

EXAMPLES = ROOT / "examples"


def agc_analysis() -> ModuleType:
    """examples/agc/ttbar.py: the AGC-style analysis of the example notebook."""
    return module_from_file(EXAMPLES / "agc" / "ttbar.py", "ttbar", importable=False)
