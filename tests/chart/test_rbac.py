"""What each ServiceAccount of the chart may do, as the real API server answers
`kubectl auth can-i --list` for it: compared with the table below, which is the trust model's
(README, "Who holds what"). A right that the chart grows fails here until the table says so.

The chart's RBAC objects alone are applied (no pod needs to run): the API server's answer
depends on nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.chart import VALUES_DIR, objects, render
from harness.commands import kubectl

pytestmark = pytest.mark.cluster

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
READ = "get list watch"
# The hub's own Secret in the values under test (hub.existingSecret).
HUB_SECRET = yaml.safe_load((VALUES_DIR / "everything.yaml").read_text())["hub"]["existingSecret"]
# {component: {resource[/subresource][.group]: verbs}} in the release's namespace; "name="
# marks a right limited to one object of that name.
RIGHTS = {
    "hub": {
        "pods": "create delete get list watch",
        "persistentvolumeclaims": "create delete get list watch",
        "services": "create delete get list watch",
        "secrets": "create",
        f"secrets name={HUB_SECRET}": "get patch",
        "events": READ,
        "deployments.apps name=<fullname>-hub": "get",
    },
    # Internet-facing: no right at all (no token is even mounted; its routes come from the
    # operator, tests/integration/test_edge.py).
    "edge": {},
    "operator": {
        "daskclusters.facility.hep.io": "create delete get list patch update watch",
        "daskclusters.facility.hep.io/status": "get patch update",
        "daskclusters.facility.hep.io/finalizers": "update",
        "pods": "create delete get list watch",
        "pods/log": "get",
        "services": "create get list watch",
        "secrets": "create get list update watch",
        "configmaps": "create",
        "configmaps name=<fullname>-operator-usage": "get update",
        "networkpolicies.networking.k8s.io": "create",
        "events": "create patch",
        "events.events.k8s.io": "create patch",
    },
}
# What every authenticated identity may do (self reviews): not the chart's.
EVERYONE = {
    "selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}  # fmt: skip
ROW = re.compile(r"^(\S+)\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


def rights(namespace: str, account: str) -> dict[str, str]:
    """`kubectl auth can-i --list` for the ServiceAccount, as {resource [name=...]: verbs}."""
    out = kubectl(
        "auth", "can-i", "--list", "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:{account}",
    ).stdout  # fmt: skip
    found: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        row = ROW.match(line)
        if not row or row.group(1) in EVERYONE:
            continue  # a non-resource URL (discovery, health), or a self review
        resource, names, verbs = row.group(1), row.group(3).split(), row.group(4).split()
        key = resource + "".join(f" name={name}" for name in names)
        found.setdefault(key, set()).update(verbs)
    return {key: " ".join(sorted(verbs)) for key, verbs in found.items()}


@pytest.fixture
def accounts(cluster: Path, namespace: str) -> Iterator[dict[str, str]]:
    """The chart's RBAC objects applied in the namespace: {component: ServiceAccount}."""
    rendered = objects(render(VALUES_DIR / "everything.yaml", namespace))
    rbac = [o for o in rendered if o["kind"] in RBAC_KINDS]
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(rbac))
    yield {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o["metadata"]["name"]
        for o in rbac
        if o["kind"] == "ServiceAccount"
    }
    cluster_wide = [o for o in rbac if o["kind"].startswith("Cluster")]
    kubectl("delete", "--ignore-not-found", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": cluster_wide}))  # fmt: skip


def test_every_service_account_may_do_what_the_table_says_and_no_more(
    accounts: dict[str, str], namespace: str
) -> None:
    assert set(accounts) == set(RIGHTS), accounts  # no other component has an identity
    for component, account in accounts.items():
        expected = {
            key.replace("<fullname>", account.removesuffix(f"-{component}")): verbs
            for key, verbs in RIGHTS[component].items()
        }
        assert rights(namespace, account) == expected, component


def test_only_the_trusted_controllers_make_pods(accounts: dict[str, str], namespace: str) -> None:
    """The hub (users' servers) and the operator (schedulers, workers) alone create pods; the
    internet-facing edge can change nothing."""
    makers = {c for c, a in accounts.items() if "create" in rights(namespace, a).get("pods", "")}
    assert makers == {"hub", "operator"}
    assert rights(namespace, accounts["edge"]) == {}


def test_no_component_but_the_operator_reads_secrets_it_does_not_own(
    accounts: dict[str, str], namespace: str
) -> None:
    """The operator reads the clusters' Secrets (it makes them); the hub reads its own alone;
    the edge none."""
    readers = {c for c, a in accounts.items() if "get" in rights(namespace, a).get("secrets", "")}
    assert readers == {"operator"}
    assert rights(namespace, accounts["hub"])[f"secrets name={HUB_SECRET}"] == "get patch"
