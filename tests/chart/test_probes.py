"""The chart's probes speak their component's protocol on a path that logs nothing per probe,
and the edge's log stays free of what is not news."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.chart import VALUES_DIR, VALUES_FILES, objects, render

# Each component's probes: a health route that its program answers without an access line at
# its default level (JupyterHub logs /hub/health at DEBUG, configurable-http-proxy and Traefik's
# ping log nothing, the operator's log filters kopf's /healthz). XCache's is a real xrootd
# request (images/xcache/xcache-probe).
EXPECTED = {
    "hub": {"path": "/hub/health", "port": "http"},
    "proxy": {"path": "/_chp_healthz", "port": "http"},
    "edge": {"path": "/ping", "port": "ping"},
    "operator": {"path": "/healthz", "port": "healthz"},
}
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


def containers(values: Path) -> dict[str, dict[str, Any]]:
    """The main container of each component's pod, by component."""
    found = {}
    for obj in objects(render(values)):
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            found[component] = obj["spec"]["template"]["spec"]["containers"][0]
    return found


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_every_probe_speaks_the_protocol_on_a_quiet_path(values: Path) -> None:
    for component, container in containers(values).items():
        probes = {kind: container[kind] for kind in PROBES if kind in container}
        assert "readinessProbe" in probes, component
        for kind, probe in probes.items():
            # A bare TCP connection to a TLS or xrootd port is logged as a failed handshake.
            assert "tcpSocket" not in probe, (component, kind)
            if component == "xcache":
                command = probe["exec"]["command"]
                assert command[0] == "xcache-probe", kind
                assert command[1].startswith("root://"), kind
                continue
            assert probe["httpGet"] == EXPECTED[component], (component, kind)
            # On a port the container names, in plain HTTP.
            assert probe["httpGet"]["port"] in {port["name"] for port in container["ports"]}


def test_the_edge_logs_plain_lines_and_reads_its_one_file() -> None:
    args = containers(VALUES_DIR / "defaults.yaml")["edge"]["args"]
    assert "--log.noColor=true" in args
    # The folder holds the kubelet's timestamped copy of hub.yaml too: not the folder.
    assert "--providers.file.filename=/etc/facility/edge/hub.yaml" in args
    assert not [a for a in args if a.startswith("--providers.file.directory")]
    # No access log by default (Traefik's own ping and the HTTP provider's polls would not
    # show in it anyway: they are internal).
    assert "--accessLog=true" not in args
