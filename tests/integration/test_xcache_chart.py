"""The chart's XCache component as rendered (helm template, helm lint; no cluster): the
StatefulSet and its cache volume, the Services, the probes, the NetworkPolicy, and values that
are refused by name. The same rendering runs for real in test_xcache.py and test_xcache_auth.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.chart import VALUES_DIR, objects, render, restricted_violations
from harness.commands import helm
from harness.paths import CHART, ROOT

ENABLED = {"xcache": {"enabled": True, "origin": {"host": "xrootd.example.org"}}}
ADDRESS = "af-facility-xcache.facility"


def rendered(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return objects(render(path))


def xcache_objects(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The xcache objects by kind/name."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o
        for o in objs
        if o["metadata"]["labels"]["app.kubernetes.io/component"].startswith("xcache")
    }


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def test_xcache_is_off_by_default() -> None:
    assert xcache_objects(objects(render(VALUES_DIR / "defaults.yaml"))) == {}


def test_the_component_and_its_service(tmp_path: Path) -> None:
    objs = xcache_objects(rendered(tmp_path, ENABLED))
    assert set(objs) == {
        "ConfigMap/af-facility-xcache",
        "StatefulSet/af-facility-xcache",
        "Service/af-facility-xcache",
        "NetworkPolicy/af-facility-xcache",
    }
    service = objs["Service/af-facility-xcache"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [{"name": "xrootd", "port": 1094, "targetPort": "xrootd"}]
    pod = objs["StatefulSet/af-facility-xcache"]["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["ports"] == [{"name": "xrootd", "containerPort": 1094}]
    assert container["command"] == ["xcache-entrypoint"]
    assert container["image"] == "facility/xcache:0.1.0"


def test_notebooks_are_allowed_to_the_port_the_cache_listens_on(tmp_path: Path) -> None:
    objs = rendered(tmp_path, ENABLED)
    (singleuser,) = [o for o in objs if o["metadata"]["name"] == "af-facility-singleuser-server"]
    to_xcache = [
        rule
        for rule in singleuser["spec"]["egress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            == "xcache"
            for peer in rule.get("to", [])
        )
    ]
    assert [port["port"] for rule in to_xcache for port in rule["ports"]] == [1094]


def test_cache_volume_and_tuning_come_from_values(tmp_path: Path) -> None:
    cache = {
        "size": "2Ti",
        "storageClassName": "local-nvme",
        "deleteOnUninstall": False,
        "blockSize": "2M",
        "ram": "8g",
        "prefetch": 20,
        "lowWatermark": "800g",
        "highWatermark": "900g",
        "purgeInterval": 120,
    }
    origin = {"host": "cms-xrd-global.cern.ch", "port": 1095}
    objs = xcache_objects(
        rendered(tmp_path, merge(ENABLED, {"xcache": {"cache": cache, "origin": origin}}))
    )
    set_ = objs["StatefulSet/af-facility-xcache"]["spec"]
    (claim,) = set_["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert claim["spec"]["storageClassName"] == "local-nvme"
    assert set_["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    config = objs["ConfigMap/af-facility-xcache"]["data"]["xcache.cfg"].splitlines()
    for line in [
        "pss.origin cms-xrd-global.cern.ch:1095",
        "pfc.blocksize 2M",
        "pfc.ram 8g",
        "pfc.prefetch 20",
        "pfc.diskusage 800g 900g purgeinterval 120s",
    ]:
        assert line in config


def test_the_cache_volume_goes_with_the_release_by_default(tmp_path: Path) -> None:
    objs = xcache_objects(rendered(tmp_path, ENABLED))
    set_ = objs["StatefulSet/af-facility-xcache"]["spec"]
    assert set_["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete",
        "whenScaled": "Retain",
    }
    # Claim templates cannot change after install: only labels that never change.
    assert "app.kubernetes.io/version" not in set_["volumeClaimTemplates"][0]["metadata"]["labels"]


def test_probes_make_a_real_xrootd_request(tmp_path: Path) -> None:
    objs = xcache_objects(rendered(tmp_path, ENABLED))
    pod = objs["StatefulSet/af-facility-xcache"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for kind in ("readinessProbe", "livenessProbe"):
        assert container[kind]["exec"]["command"] == ["xcache-probe", f"root://{ADDRESS}:1094"]
    # In the pod, the cache's address is the pod itself: the probe checks the certificate
    # against the name clients use.
    assert pod["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": [ADDRESS]}]
    probe = (ROOT / "images" / "xcache" / "xcache-probe").read_text()
    assert 'xrdfs "$url" query config version' in probe


def test_a_config_change_restarts_the_cache(tmp_path: Path) -> None:
    def checksum(values: dict[str, Any]) -> str:
        objs = xcache_objects(rendered(tmp_path, values))
        template = objs["StatefulSet/af-facility-xcache"]["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    changed = merge(ENABLED, {"xcache": {"cache": {"blockSize": "4M"}}})
    assert checksum(ENABLED) != checksum(changed)


def test_no_external_service_unless_asked(tmp_path: Path) -> None:
    objs = xcache_objects(rendered(tmp_path, ENABLED))
    policy = objs["NetworkPolicy/af-facility-xcache"]["spec"]
    assert "Service/af-facility-xcache-external" not in objs
    assert all(rule.get("from") for rule in policy["ingress"])  # only pods inside


@pytest.mark.parametrize("kind", ["NodePort", "LoadBalancer"])
def test_an_external_service_for_the_batch_nodes(tmp_path: Path, kind: str) -> None:
    external = {
        "type": kind,
        "port": 31094,
        "nodePort": 31094,
        "loadBalancerIP": "192.0.2.20",
        "loadBalancerSourceRanges": ["192.0.2.0/24"],
        "externalTrafficPolicy": "Local",
        "annotations": {"lb.example.org/internal": "1"},
    }
    values = merge(
        ENABLED,
        {"xcache": {"external": external, "networkPolicy": {"clientCIDRs": ["192.0.2.0/24"]}}},
    )
    objs = xcache_objects(rendered(tmp_path, values))
    service = objs["Service/af-facility-xcache-external"]
    spec = service["spec"]
    assert spec["type"] == kind
    assert spec["ports"] == [
        {"name": "xrootd", "port": 31094, "targetPort": "xrootd", "nodePort": 31094}
    ]
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["selector"]["app.kubernetes.io/component"] == "xcache"
    assert service["metadata"]["annotations"] == {"lb.example.org/internal": "1"}
    assert ("loadBalancerIP" in spec) == (kind == "LoadBalancer")
    policy = objs["NetworkPolicy/af-facility-xcache"]["spec"]
    assert {"ports": [{"port": "xrootd"}], "from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]} in (
        policy["ingress"]
    )


def test_the_network_policy(tmp_path: Path) -> None:
    issuers = [
        {"name": "cms", "url": "https://cms-auth.web.cern.ch/", "basePaths": ["/store"]},
        {"name": "site", "url": "https://iam.example.org:8443/", "basePaths": ["/store/user"]},
    ]
    values = merge(
        ENABLED,
        {
            "xcache": {
                "origin": {"port": 1095},
                "tls": {"secretName": "xcache-tls"},
                "auth": {"enabled": True, "issuers": issuers},
            }
        },
    )
    policy = xcache_objects(rendered(tmp_path, values))["NetworkPolicy/af-facility-xcache"]
    spec = policy["spec"]
    # The readers, and `helm test`'s check (tests/chart/test_helm_test_hooks.py), on xrootd alone.
    inside, check = spec["ingress"]
    readers = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in inside["from"]
    }
    assert readers == {"singleuser-server", "dask-scheduler", "dask-worker"}
    assert inside["ports"] == [{"port": "xrootd"}]
    assert [
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in check["from"]
    ] == ["helm-test"]
    assert check["ports"] == [{"port": "xrootd"}]
    egress_ports = sorted(port["port"] for rule in spec["egress"] for port in rule["ports"])
    assert egress_ports == [53, 53, 443, 1095, 8443]  # DNS, the issuers, the origin


def test_token_auth_renders_issuers_and_mounts(tmp_path: Path) -> None:
    issuers = [
        {
            "name": "site",
            "url": "https://iam.example.org/",
            "basePaths": ["/store/user", "/store/group"],
            "restrictedPaths": ["/store/user/alice"],
            "mapSubject": True,
            "defaultUser": "cms",
        }
    ]
    auth = {
        "enabled": True,
        "issuers": issuers,
        "audiences": ["https://af.example.org"],
        "caBundle": {"configMap": "site-cas", "key": "bundle.pem"},
    }
    values = merge(ENABLED, {"xcache": {"tls": {"secretName": "xcache-tls"}, "auth": auth}})
    objs = xcache_objects(rendered(tmp_path, values))
    scitokens = objs["ConfigMap/af-facility-xcache"]["data"]["scitokens.cfg"].splitlines()
    for line in [
        'audience_json = ["https://af.example.org"]',
        "[Issuer site]",
        "issuer = https://iam.example.org/",
        "base_path = /store/user, /store/group",
        "restricted_path = /store/user/alice",
        "map_subject = true",
        "default_user = cms",
    ]:
        assert line in scitokens
    pod = objs["StatefulSet/af-facility-xcache"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["issuer-ca"]["mountPath"] == "/etc/ssl/certs/ca-certificates.crt"
    assert mounts["issuer-ca"]["subPath"] == "bundle.pem"
    assert {"name": "tls", "secret": {"secretName": "xcache-tls"}} in pod["volumes"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["XCACHE_PROBE_KEYTAB"] == "/run/xcache/probe.keytab"


# (case, xcache values, what helm's error names)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("enabled without an origin", {"enabled": True}, "/xcache/origin/host"),
    (
        "auth without TLS",
        {
            "auth": {
                "enabled": True,
                "issuers": [{"name": "a", "url": "https://a.example.org", "basePaths": ["/store"]}],
            }
        },
        "/xcache/tls/secretName",
    ),
    (
        "auth without issuers",
        {"tls": {"secretName": "t"}, "auth": {"enabled": True}},
        "/xcache/auth/issuers",
    ),
    (
        "an issuer over plain http",
        {
            "tls": {"secretName": "t"},
            "auth": {
                "enabled": True,
                "issuers": [{"name": "a", "url": "http://a.example.org", "basePaths": ["/store"]}],
            },
        },
        "/xcache/auth/issuers/0/url",
    ),
    ("less RAM than xrootd accepts", {"cache": {"ram": "512m"}}, "/xcache/cache/ram"),
    (
        "a purge interval under 60 s",
        {"cache": {"purgeInterval": 30}},
        "/xcache/cache/purgeInterval",
    ),
    ("a watermark of 1", {"cache": {"highWatermark": 1}}, "/xcache/cache/highWatermark"),
    (
        "low watermark above the high one",
        {"cache": {"lowWatermark": 0.95, "highWatermark": 0.9}},
        "xcache.cache.lowWatermark (0.95) must be below",
    ),
    (
        "a node port without an external Service",
        {"external": {"nodePort": 31094}},
        "/xcache/external/nodePort",
    ),
    ("a relative cache path", {"paths": {"data": "cache"}}, "/xcache/paths/data"),
    ("an unknown key", {"cachesize": "1Ti"}, "'cachesize'"),
]


@pytest.mark.parametrize(("case", "xcache", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_by_name(
    tmp_path: Path, case: str, xcache: dict[str, Any], message: str
) -> None:
    values = merge(ENABLED if case != "enabled without an origin" else {}, {"xcache": xcache})
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    # The install path (schema, then templates) refuses every case ...
    done = helm("template", "af", str(CHART), "-f", str(path), check=False)
    assert done.returncode != 0
    assert message in done.stderr
    # ... and helm lint those the schema refuses (a template's `fail` it only logs).
    if message.startswith(("/", "'")):
        done = helm("lint", "--strict", str(CHART), "-f", str(path), check=False)
        assert done.returncode != 0
        assert message in done.stdout + done.stderr
