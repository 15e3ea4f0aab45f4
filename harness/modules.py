"""Loading a script of the repository (not a package) as a module, without editing sys.path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def module_from_file(path: Path, name: str, *, importable: bool = True) -> ModuleType:
    """The script at `path` run as the module `name`. importable: put in sys.modules, as an import
    would (dataclasses look their module up there); without it, pickling (Dask, cloudpickle)
    sends the module's functions by value, as it does a notebook's cells."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    if importable:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
