"""The chart's values and release facts, as the hub receives them (a mounted Secret)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A value the hub cannot work with; the message names the value and the fix."""


@dataclass(frozen=True)
class Facility:
    """`values` is the chart's values, whole; `release` holds names the chart derived."""

    values: dict[str, Any]
    release: dict[str, Any]

    @property
    def namespace(self) -> str:
        return str(self.release["namespace"])

    def name(self, component: str) -> str:
        """The Kubernetes name of one of the release's objects (hub, proxyApi, edge, ...)."""
        return str(self.release["names"][component])


def load(config_dir: Path) -> Facility:
    """Read values.yaml and release.yaml, as the chart's hub-values Secret provides them."""
    documents = {}
    for name in ("values.yaml", "release.yaml"):
        path = config_dir / name
        try:
            documents[name] = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as error:
            message = f"{path} is missing: the hub expects the chart's values there"
            raise ConfigError(message) from error
    return Facility(values=documents["values.yaml"], release=documents["release.yaml"])
