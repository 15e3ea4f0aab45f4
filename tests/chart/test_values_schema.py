"""The values schema is written once (values.schema.yaml): what Helm reads and the values
reference are generated from it by ci/values-schema.py, and every key is described there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import yaml

GENERATOR = Path(__file__).resolve().parents[2] / "ci" / "values-schema.py"


def generator() -> ModuleType:
    """ci/values-schema.py as a module (its file name is not an importable name)."""
    spec = importlib.util.spec_from_file_location("values_schema", GENERATOR)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_json_schema_and_the_reference_are_generated_from_the_yaml_source() -> None:
    for path, text in generator().outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run ci/values-schema.py"


def test_every_key_of_values_yaml_has_a_description() -> None:
    gen = generator()
    schema = yaml.safe_load(gen.SOURCE.read_text())
    values = yaml.safe_load(gen.VALUES.read_text())
    undescribed = [k.path for k in gen.keys(schema, values) if not gen.description(k, schema)]
    assert not undescribed, f"no description in values.schema.yaml: {undescribed}"
