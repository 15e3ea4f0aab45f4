"""The chart's `helm test` hooks (templates/tests/), as rendered: one Pod per check, named for its
component, restricted and without a token, running the chart's own image of what it checks at the
port of the values; a NetworkPolicy of their own that reaches exactly those ports, and components
that admit them there alone. The checks' scripts are run here too, against stand-ins of what they
ask (a local HTTP(S) server, a fake xrdfs): each prints one line and fails naming what failed.
The live run (`helm test` on an install) is tests/e2e's."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.chart import VALUES_DIR, objects, render, restricted_violations
from harness.paths import ROOT
from harness.pki import Pki

DEFAULTS = yaml.safe_load((ROOT / "charts/facility/values.yaml").read_text())
TAG = yaml.safe_load((ROOT / "charts/facility/Chart.yaml").read_text())["appVersion"]
XCACHE_ON = ["--set", "xcache.enabled=true", "--set", "xcache.origin.host=origin.example.org"]
HOOK = {"helm.sh/hook": "test", "helm.sh/hook-delete-policy": "before-hook-creation"}
# Ports away from their defaults, so that a port taken from anywhere but the values shows.
PORTS = ["--set", "hub.port=9081", "--set", "operator.apiPort=9100",
         "--set", "edge.service.port=9443", "--set", "edge.containerPorts.websecure=9444",
         "--set", "xcache.port=2094", "--set", "imageRegistry=registry.example.org"]  # fmt: skip


def rendered(*extra: str, values: Path = VALUES_DIR / "defaults.yaml") -> list[dict[str, Any]]:
    return objects(render(values, "facility", *extra))


def hook_pods(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The test Pods by name, without the release's prefix."""
    return {
        o["metadata"]["name"].removeprefix("af-facility-"): o
        for o in objs
        if o["kind"] == "Pod" and "helm.sh/hook" in o["metadata"].get("annotations", {})
    }


def policies(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]
        for o in objs
        if o["kind"] == "NetworkPolicy"
    }


def peer_components(rule: dict[str, Any], key: str) -> set[str]:
    return {
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component", "")
        for p in rule.get(key, [])
    }


def test_each_check_is_a_restricted_test_hook_pod_named_for_its_component() -> None:
    pods = hook_pods(rendered(*XCACHE_ON))
    assert set(pods) == {"test-hub", "test-operator", "test-edge", "test-xcache"}
    for name, pod in pods.items():
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["annotations"] == HOOK, name
        assert meta["labels"]["app.kubernetes.io/component"] == "helm-test", name
        assert meta["labels"]["app.kubernetes.io/instance"] == "af", name
        assert restricted_violations(spec) == [], name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["restartPolicy"] == "Never", name
        assert spec["activeDeadlineSeconds"] == DEFAULTS["tests"]["deadlineSeconds"], name
        (container,) = spec["containers"]
        assert container["resources"] == DEFAULTS["tests"]["resources"], name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert not container.get("env"), name  # no token or other secret handed in


def command_of(pod: dict[str, Any]) -> list[str]:
    (container,) = pod["spec"]["containers"]
    return container["command"]


def test_each_check_runs_the_charts_own_image_at_the_port_of_its_values() -> None:
    pods = hook_pods(rendered(*XCACHE_ON, *PORTS))
    images = {n: p["spec"]["containers"][0]["image"] for n, p in pods.items()}
    assert images == {
        "test-hub": f"registry.example.org/facility/hub:{TAG}",
        # Traefik's image has no Python: the hub's asks through the edge.
        "test-edge": f"registry.example.org/facility/hub:{TAG}",
        "test-operator": f"registry.example.org/facility/operator:{TAG}",
        "test-xcache": f"registry.example.org/facility/xcache:{TAG}",
    }
    # python3 -c SCRIPT CHECK URL STATUS KEY NAME
    assert command_of(pods["test-hub"])[3:] == [
        "hub", "http://af-facility-hub.facility:9081/hub/api/", "200", "version", "",
    ]  # fmt: skip
    assert command_of(pods["test-operator"])[3:] == [
        "operator", "http://af-facility-operator.facility:9100/clusters", "401", "error", "",
    ]  # fmt: skip
    # The Service's port (it maps it onto the container's).
    assert command_of(pods["test-edge"])[3:] == [
        "edge", "https://af-facility-edge.facility:9443/hub/health", "200", "", "",
    ]  # fmt: skip
    assert (
        "xrdfs root://af-facility-xcache.facility:2094 query" in command_of(pods["test-xcache"])[2]
    )


def test_the_edge_is_asked_as_its_host_when_it_has_one() -> None:
    pods = hook_pods(rendered("--set", "edge.host=af.example.org"))
    assert command_of(pods["test-edge"])[-1] == "af.example.org"


def test_xcache_is_checked_against_the_ca_of_its_secret() -> None:
    pods = hook_pods(rendered(*XCACHE_ON, "--set", "xcache.tls.secretName=xcache-tls"))
    spec = pods["test-xcache"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    # The CA alone: the cache's key never leaves its pod.
    assert volume["secret"] == {
        "secretName": "xcache-tls",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert {"name": "tls", "mountPath": "/etc/xcache-tls", "readOnly": True} in (
        spec["containers"][0]["volumeMounts"]
    )


def test_the_test_pods_reach_exactly_the_checked_ports() -> None:
    objs = rendered(*XCACHE_ON, *PORTS)
    spec = policies(objs)["helm-test"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "helm-test"
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in spec  # Ingress with no rule: nothing admitted
    dns, *rest = spec["egress"]
    assert "to" not in dns
    assert {p["port"] for p in dns["ports"]} == {53}
    reached = {
        (component, port["port"])
        for rule in rest
        for component in peer_components(rule, "to")
        for port in rule["ports"]
    }
    # The pods' own ports (a policy sees them after the Service's translation).
    assert reached == {("hub", 9081), ("edge", 9444), ("operator", 9100), ("xcache", 2094)}
    assert all(len(rule["to"]) == 1 for rule in rest)


def test_the_checked_components_admit_the_test_pods_on_that_port_alone() -> None:
    every = policies(rendered(*XCACHE_ON))
    admitted = {
        component: [
            rule["ports"]
            for rule in spec.get("ingress", [])
            if "helm-test" in peer_components(rule, "from")
        ]
        for component, spec in every.items()
    }
    for component, port in {"hub": "http", "operator": "http", "xcache": "xrootd"}.items():
        # A rule of their own: the port of the check, and from them alone.
        assert admitted.pop(component) == [[{"port": port}]], component
    # The edge takes HTTPS from anyone already; the proxy is reached through the edge.
    assert all(ports == [] for ports in admitted.values()), admitted
    assert any(
        "from" not in rule and {"port": "websecure"} in rule["ports"]
        for rule in every["edge"]["ingress"]
    )


def test_the_tests_can_be_switched_off() -> None:
    objs = rendered(*XCACHE_ON, "--set", "tests.enabled=false")
    assert hook_pods(objs) == {}
    every = policies(objs)
    assert "helm-test" not in every
    assert "helm-test" not in json.dumps(every)


def test_only_the_components_that_run_are_checked() -> None:
    objs = rendered("--set", "operator.enabled=false")
    assert set(hook_pods(objs)) == {"test-hub", "test-edge"}
    reached = {
        c for rule in policies(objs)["helm-test"]["egress"] for c in peer_components(rule, "to")
    }
    assert reached == {"hub", "edge"}


# --- the checks' scripts, run here -------------------------------------------------------------


class AnswerServer(http.server.ThreadingHTTPServer):
    """A local HTTP server: answers GET path with answers[path], (status, body); notes in seen
    each request's (path, Host)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Answer)
        self.answers: dict[str, tuple[int, str]] = {}
        self.seen: list[tuple[str, str]] = []


class Answer(http.server.BaseHTTPRequestHandler):
    server: AnswerServer

    def do_GET(self) -> None:
        status, body = self.server.answers.get(self.path, (404, ""))
        self.server.seen.append((self.path, self.headers["Host"]))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnswerServer]:
    """The local server, over HTTPS (a certificate of a CA of its own) when asked."""
    httpd = AnswerServer()
    if getattr(request, "param", "") == "https":
        cert, key = Pki().issue(["elsewhere.example.org"])
        (tmp_path / "tls.crt").write_bytes(cert)
        (tmp_path / "tls.key").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run_check(pod: dict[str, Any], url: str) -> subprocess.CompletedProcess[str]:
    """The pod's command with its URL replaced by `url` (this machine's Python for python3)."""
    command = command_of(pod)
    args = [sys.executable if command[0] == "python3" else command[0], *command[1:]]
    args[4] = url
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_the_hub_check_passes_on_the_api_and_fails_naming_what(
    server: AnswerServer,
) -> None:
    pod = hook_pods(rendered())["test-hub"]
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/hub/api/"
    server.answers["/hub/api/"] = (200, json.dumps({"version": "5.2.1"}))
    done = run_check(pod, url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"hub: ok: GET {url} answers 200 with JSON 'version'; version: 5.2.1\n"

    server.answers["/hub/api/"] = (503, "<html>down</html>")
    done = run_check(pod, url)
    assert done.returncode == 1
    assert done.stdout.startswith(
        f"hub: FAILED: GET {url} answers 200 with JSON 'version': got 503"
    )

    server.answers["/hub/api/"] = (200, "<html>not the API</html>")
    assert "FAILED" in run_check(pod, url).stdout

    server.shutdown()
    server.server_close()
    done = run_check(pod, url)
    assert done.returncode == 1
    assert done.stdout.startswith("hub: FAILED: ")
    assert "ConnectionRefusedError" in done.stdout
    assert len(done.stdout.splitlines()) == 1


def test_the_operator_check_wants_its_refusal_of_no_token(server: AnswerServer) -> None:
    pod = hook_pods(rendered())["test-operator"]
    url = f"http://127.0.0.1:{server.server_address[1]}/clusters"
    refusal = json.dumps({"error": "send your JupyterHub token: Authorization: token <token>"})
    server.answers["/clusters"] = (401, refusal)
    done = run_check(pod, url)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith(f"operator: ok: GET {url} answers 401 with JSON 'error'")
    # An API that let anyone in would be a failure too.
    server.answers["/clusters"] = (200, "[]")
    assert run_check(pod, url).stdout.startswith("operator: FAILED: ")


@pytest.mark.parametrize("server", ["https"], indirect=True)
def test_the_edge_check_asks_over_tls_as_the_edges_host(server: AnswerServer) -> None:
    pod = hook_pods(rendered("--set", "edge.host=af.example.org"))["test-edge"]
    url = f"https://127.0.0.1:{server.server_address[1]}/hub/health"
    server.answers["/hub/health"] = (200, "")
    done = run_check(pod, url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"edge: ok: GET {url} as af.example.org answers 200, over TLS")
    assert server.seen == [("/hub/health", "af.example.org")]
    # Plain HTTP where TLS is wanted fails.
    plain = run_check(pod, url.replace("https:", "http:"))
    assert plain.returncode == 1
    assert plain.stdout.startswith("edge: FAILED: ")


def fake_xrdfs(folder: Path, output: str, status: int) -> dict[str, str]:
    """An environment whose xrdfs prints `output` and exits `status`."""
    folder.mkdir(exist_ok=True)
    xrdfs = folder / "xrdfs"
    xrdfs.write_text(f"#!/bin/sh\necho {output!r} >&2\nexit {status}\n")
    xrdfs.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("auth", "output", "status", "passes"),
    [
        (False, "5.5.4", 0, True),
        (True, "[FATAL] Auth failed: No protocols left to try", 51, True),
        # Without token authorization the cache must answer: a refusal is a failure.
        (False, "[FATAL] Auth failed: No protocols left to try", 51, False),
        (True, "[ERROR] Socket error: Connection refused", 51, False),
        (True, "[FATAL] TLS error: certificate verify failed", 51, False),
    ],
)
def test_the_xcache_check(
    tmp_path: Path, auth: bool, output: str, status: int, passes: bool
) -> None:
    extra = ["--set", f"xcache.auth.enabled={str(auth).lower()}"]
    if auth:
        issuer = {"name": "t", "url": "https://t.example.org", "basePaths": ["/store"]}
        extra += ["--set", "xcache.tls.secretName=xcache-tls",
                  "--set-json", f"xcache.auth.issuers={json.dumps([issuer])}"]  # fmt: skip
    pod = hook_pods(rendered(*XCACHE_ON, *extra))["test-xcache"]
    shell, flag, script = command_of(pod)
    done = subprocess.run(
        [shell, flag, script], env=fake_xrdfs(tmp_path / "bin", output, status),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert len(done.stdout.splitlines()) == 1, done.stdout + done.stderr
    assert (done.returncode == 0) is passes, done.stdout
    assert done.stdout.startswith("xcache: ok: " if passes else "xcache: FAILED: ")
    assert output in done.stdout
