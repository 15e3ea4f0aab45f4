"""Bad values fail at `helm lint` and at install time, with a message that names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.commands import helm
from harness.paths import CHART

HOST = {"edge": {"host": "af.example.org"}}

# (case, values, what the error message must name)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type", {"edge": {"replicas": "two"}}, "/edge/replicas"),
    ("unknown top-level key", {"hubb": {}}, "'hubb'"),
    ("unknown nested key", {"hub": {"image": {"repo": "x"}}}, "'repo'"),
    ("unknown auth type", {"auth": {"type": "github"}}, "/auth/type"),
    (
        "negative memory",
        {"hub": {"resources": {"limits": {"memory": "-1Gi"}}}},
        "/hub/resources/limits/memory",
    ),
    (
        "negative cpu number",
        {"proxy": {"resources": {"requests": {"cpu": -1}}}},
        "/proxy/resources/requests/cpu",
    ),
    (
        "not a quantity",
        {"edge": {"resources": {"limits": {"memory": "lots"}}}},
        "/edge/resources/limits/memory",
    ),
    ("port out of range", {"edge": {"service": {"port": 70000}}}, "/edge/service/port"),
    ("host not a DNS name", {"edge": {"host": "AF.example.org/hub"}}, "/edge/host"),
    ("bad env name", {"hub": {"extraEnv": {"1BAD": "x"}}}, "/hub/extraEnv"),
    ("zero replicas", {"edge": {"replicas": 0}}, "/edge/replicas"),
    (
        "oidc login without client id",
        {**HOST, "auth": {"type": "oidc", "oidc": {"issuer": "https://iam.example.org/"}}},
        "/auth/clientId",
    ),
    (
        "cilogon login without client secret",
        {**HOST, "auth": {"type": "cilogon", "clientId": "cilogon:/client_id/1"}},
        "/auth/clientSecret",
    ),
    (
        "cern login without host",
        {"auth": {"type": "cern", "existingSecret": "cern-client"}},
        "/edge/host",
    ),
    (
        "oidc without issuer or endpoints",
        {**HOST, "auth": {"type": "oidc", "existingSecret": "iam-client"}},
        "/auth/oidc/authorizeUrl",
    ),
    ("external db without url", {"hub": {"db": {"type": "url"}}}, "/hub/db/url"),
    (
        "no worker interval",
        {"operator": {"workers": {"interval": 0}}},
        "/operator/workers/interval",
    ),
    ("negative volume size", {"hub": {"db": {"pvc": {"storage": "-5Gi"}}}}, "/hub/db/pvc/storage"),
    (
        "node port on a ClusterIP service",
        {"edge": {"service": {"type": "ClusterIP", "nodePort": 30443}}},
        "/edge/service/nodePort",
    ),
    ("unknown default backend", {"operator": {"backend": "pbs"}}, "/operator/backend"),
    ("operator API on kopf's health port", {"operator": {"apiPort": 8080}}, "/operator/apiPort"),
    (
        "operator metrics on kopf's health port",
        {"operator": {"metricsPort": 8080}},
        "/operator/metricsPort",
    ),
    (
        "unknown HTCondor universe",
        {"operator": {"backends": {"htcondor": {"universe": "grid"}}}},
        "/operator/backends/htcondor/universe",
    ),
    (
        "negative quota",
        {"operator": {"quotas": {"users": {"alice": {"clusters": -1}}}}},
        "/operator/quotas/users/alice/clusters",
    ),
]


@pytest.fixture(params=CASES, ids=[case[0] for case in CASES])
def bad(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    _, values, message = request.param
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path, message


def test_lint_names_the_key(bad: tuple[Path, str]) -> None:
    values, message = bad
    done = helm("lint", "--strict", str(CHART), "-f", str(values), check=False)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr


@pytest.mark.cluster
def test_install_names_the_key(bad: tuple[Path, str], cluster: Path) -> None:
    # helm's own install path (schema, then templates); it asks the cluster for its version.
    values, message = bad
    done = helm("install", "af", str(CHART), "--dry-run=client", "-f", str(values), check=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert "panic" not in done.stderr


def test_the_schedulers_old_egress_is_refused_with_the_fix(tmp_path: Path) -> None:
    """operator.scheduler.networkPolicy opened the schedulers to the batch system; the operator
    submits the workers now, so a site's old value is refused (at render: helm lint lets a
    template's `fail` pass) with where its rules go instead."""
    values = tmp_path / "values.yaml"
    egress = {"extraEgress": [{"ports": [{"port": 9618}]}]}
    values.write_text(yaml.safe_dump({"operator": {"scheduler": {"networkPolicy": egress}}}))
    done = helm("template", "af", str(CHART), "-f", str(values), check=False)
    assert done.returncode != 0
    assert "Move its extraEgress rules to operator.networkPolicy.extraEgress" in done.stderr


@pytest.mark.parametrize(
    ("operator", "fix"),
    [
        ({"backends": {"slurm": {"extraDirectives": ["--qos=short"]}}},
         "in operator.backends.slurm.extraProperties (e.g. {qos: short})"),
        ({"backend": "slurm"}, "set operator.backends.slurm.restUrl (the site's slurmrestd)"),
        ({"backend": "slurm", "backends": {"slurm": {"restUrl": "http://slurmrestd:6820"}}},
         "operator.backends.slurm.jwtKeySecret (a Secret with its JWT key)"),
    ],
)  # fmt: skip
def test_slurm_without_its_rest_api_is_refused_with_the_fix(
    tmp_path: Path, operator: dict, fix: str
) -> None:
    """The SLURM backend submits through slurmrestd as each job's owner: the old #SBATCH lines,
    or a SLURM default without slurmrestd and its JWT key, are refused at render."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"operator": operator}))
    done = helm("template", "af", str(CHART), "-f", str(values), check=False)
    assert done.returncode != 0
    assert fix in done.stderr


def test_cilogon_may_strip_the_domain_of_one_identity_provider_only(tmp_path: Path) -> None:
    """The site's CILogon values (which strip unl.edu's domain) with one more such provider:
    refused at render, naming both; with the other provider prefixing instead, accepted."""
    site = CHART.parent.parent / "tests/chart/values/cilogon.yaml"
    strip = {"username_derivation": {"username_claim": "email", "action": "strip_idp_domain"}}
    prefix = {"username_derivation": {"username_claim": "email", "action": "prefix",
                                      "prefix": "cern"}}  # fmt: skip
    values = tmp_path / "values.yaml"
    for rule, refused in ((strip, True), (prefix, False)):
        more = {"auth": {"cilogon": {"allowedIdps": {"https://idp.cern.ch": rule}}}}
        values.write_text(yaml.safe_dump(more))
        done = helm("template", "af", str(CHART), "-f", str(site), "-f", str(values), check=False)
        assert (done.returncode != 0) is refused, done.stderr
        if refused:
            assert "https://idp.cern.ch, urn:mace:incommon:unl.edu all strip" in done.stderr
