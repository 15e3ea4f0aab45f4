"""The values the chart hands to the hub (its hub-values Secret) configure JupyterHub as is."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from harness.chart import VALUES_FILES, handed_over
from hub_config.config import configure
from hub_config.facility import ConfigError


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_hub_configures_from_the_rendered_values(
    values: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the hub Deployment's environment holds: the auth_state key, the OAuth client when the
    # values name an existing Secret for it, and the scraper's token (metrics.hub.tokenSecret).
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "00" * 32)
    monkeypatch.setenv("FACILITY_OAUTH_CLIENT_ID", "from-secret")
    monkeypatch.setenv("FACILITY_OAUTH_CLIENT_SECRET", "from-secret")
    monkeypatch.setenv("FACILITY_METRICS_TOKEN", "from-secret-scraper")
    facility = handed_over(values)
    c = Config()
    if values.stem == "defaults":
        # The default login is the development one: the hub refuses it outside devMode.
        with pytest.raises(ConfigError, match="devMode"):
            configure(c, facility)
        return
    configure(c, facility)
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert c.KubeSpawner.namespace == "facility"
    assert c.ConfigurableHTTPProxy.api_url.endswith("-proxy-api.facility:8001")
