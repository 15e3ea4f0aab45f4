"""The facility's examples (examples/ of the repository) as modules, for the tests and the
benchmarks that run the same analysis as the notebook does."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def agc_analysis() -> ModuleType:
    """examples/agc/ttbar.py: the AGC-style analysis of the example notebook."""
    path = EXAMPLES / "agc" / "ttbar.py"
    spec = importlib.util.spec_from_file_location("ttbar", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
