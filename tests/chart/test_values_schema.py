"""The values schema is written once (values.schema.yaml): what Helm reads and the values
reference are generated from it by ci/values-schema.py, and every key is described there."""

from __future__ import annotations

from types import ModuleType

import yaml

from harness.modules import module_from_file
from harness.paths import ROOT

GENERATOR = ROOT / "ci" / "values-schema.py"


def generator() -> ModuleType:
    """ci/values-schema.py as a module (its file name is not an importable name)."""
    return module_from_file(GENERATOR, "values_schema")


def test_the_json_schema_and_the_reference_are_generated_from_the_yaml_source() -> None:
    for path, text in generator().outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run ci/values-schema.py"


def test_every_key_of_values_yaml_has_a_description() -> None:
    gen = generator()
    schema = yaml.safe_load(gen.SOURCE.read_text())
    values = yaml.safe_load(gen.VALUES.read_text())
    undescribed = [k.path for k in gen.keys(schema, values) if not gen.description(k, schema)]
    assert not undescribed, f"no description in values.schema.yaml: {undescribed}"
