#!/usr/bin/env python3
"""Write the chart's JSON schema and values reference from the one source, values.schema.yaml.

    ci/values-schema.py          writes charts/facility/values.schema.json and docs/values.md
    ci/values-schema.py --check  fails, naming them, when either differs from what it would write

Helm reads only JSON; the YAML source carries a description for every key of values.yaml, and
the reference lists each key with its type, its default (from values.yaml) and that description.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "facility"
SOURCE = CHART / "values.schema.yaml"
VALUES = CHART / "values.yaml"
SCHEMA_JSON = CHART / "values.schema.json"
REFERENCE = ROOT / "docs" / "values.md"

Node = Mapping[str, Any]


@dataclass(frozen=True)
class Key:
    """One key of values.yaml: its dotted path, its schema and its default."""

    path: str
    schema: Node
    default: Any


def resolved(node: Node, schema: Node) -> Node:
    """The node itself, or the definition its $ref names (the chart's refs are local)."""
    ref = node.get("$ref")
    if not ref:
        return node
    return resolved(schema["definitions"][ref.removeprefix("#/definitions/")], schema)


def keys(schema: Node, values: Mapping[str, Any]) -> Iterator[Key]:
    """Every key of values.yaml, depth first, down to where the schema stops naming properties
    (free-form maps such as nodeSelector or resources.requests)."""

    def walk(node: Node, defaults: Mapping[str, Any], prefix: str) -> Iterator[Key]:
        properties = resolved(node, schema).get("properties", {})
        for name, default in defaults.items():
            path = f"{prefix}{name}"
            if name not in properties:
                raise SystemExit(f"{VALUES}: {path} is not in {SOURCE.name}")
            yield Key(path, properties[name], default)
            if isinstance(default, Mapping) and "properties" in resolved(properties[name], schema):
                yield from walk(properties[name], default, f"{path}.")

    yield from walk(schema, values, "")


def description(key: Key, schema: Node) -> str:
    """The key's own description, else its definition's (a $ref shared by several keys)."""
    return str(key.schema.get("description") or resolved(key.schema, schema).get("description", ""))


def type_name(node: Node, schema: Node) -> str:
    node = resolved(node, schema)
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(v) for v in node["enum"])
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        return " or ".join(types)
    alternatives = node.get("oneOf") or node.get("anyOf") or node.get("allOf") or []
    names = [type_name(a, schema) for a in alternatives]
    return " or ".join(dict.fromkeys(n for n in names if n)) or "any"


def schema_json(schema: Node) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def cell(text: str) -> str:
    """Text for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def reference(schema: Node, values: Mapping[str, Any]) -> str:
    lines = [
        "# Values of the facility chart",
        "",
        "<!-- Written by ci/values-schema.py from charts/facility/values.schema.yaml and the",
        "defaults in charts/facility/values.yaml: edit those, then run it. -->",
        "",
        "Every key a site may set, with its type, its default and what it does. A site's values",
        "file sets only what differs; the chart's schema refuses keys it does not know.",
        "",
        "| Key | Type | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for key in keys(schema, values):
        # A section's default is that of its keys, in the rows below it.
        section = isinstance(key.default, Mapping) and "properties" in resolved(key.schema, schema)
        default = "(below)" if section else f"`{cell(json.dumps(key.default, ensure_ascii=False))}`"
        row = (f"`{key.path}`", cell(type_name(key.schema, schema)), default,
               cell(description(key, schema)))  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def outputs() -> dict[Path, str]:
    """What the generator writes, by file."""
    schema = yaml.safe_load(SOURCE.read_text())
    values = yaml.safe_load(VALUES.read_text())
    return {SCHEMA_JSON: schema_json(schema), REFERENCE: reference(schema, values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when an output is stale")
    check = parser.parse_args().check
    written = outputs()
    stale = [
        path for path, text in written.items() if not path.exists() or path.read_text() != text
    ]
    if check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run ci/values-schema.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in written.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
