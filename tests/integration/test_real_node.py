"""ci/cluster's real-node mode: this machine is a Kubernetes node (kubelet, containerd, runc,
a CNI bridge, kube-proxy, CoreDNS, local-path-provisioner, kube-router's firewall), pods really
run, `kubectl logs` and `kubectl exec` reach them, a volume claim outlives its pod,
NetworkPolicies are enforced, and `down` leaves nothing behind.

It runs a cluster of its own (own state dir and ports) beside the developer's, and needs the
images from ci/images: pause, coredns, and the Debian base they are built on, which the node
imports for the storage helper pods. The pods here run that Debian image too: the node is under
test, not the facility's images (tests/images has their smoke tests).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.local_cluster import cluster_ports
from harness.net import listening, pid_alive
from harness.paths import ROOT, TOOLS
from harness.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]
PORT_BASE = 19400
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd",
              "kubelet", "kube-proxy", "kube-router", "local-path-provisioner"]  # fmt: skip
NODE = "facility-node-0"
NAMESPACE = "probe"
# The users' notebook pods' identity (hub_config/spawner.py: UID, GID): uid 1000, group 100
# (users), which also owns their volumes (fsGroup). (The chart's own pods run as 1000:1000.)
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
                "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def cluster(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "ci" / "cluster"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("real") / "cluster"
    env = {**os.environ, "FACILITY_CLUSTER_DIR": str(state),
           "FACILITY_CLUSTER_PORT_BASE": str(PORT_BASE), "FACILITY_NODES": "real"}  # fmt: skip
    up = cluster(env, "up", timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    yield env
    cluster(env, "down")


def kubectl(env: dict[str, str], *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    kubeconfig = Path(env["FACILITY_CLUSTER_DIR"]) / "kubeconfig"
    return subprocess.run([str(TOOLS / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                          capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]  # fmt: skip


def in_namespace(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl in the test's namespace."""
    return kubectl(env, f"--namespace={NAMESPACE}", *args)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The output of a kubectl run that must succeed (the first time: no retry hides a flake)."""
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def image(real: dict[str, str]) -> str:
    """The node's Debian image (ci/cluster imports it for the storage helper pods)."""

    def debian() -> str | None:
        node = json.loads(ok(kubectl(real, "get", "node", NODE, "-o", "json")))
        names = [name for image in node["status"].get("images", []) for name in image["names"]]
        return next((name for name in names if name.startswith("localhost/facility/debian:")), None)

    return str(wait_for(debian, "the node to report its Debian image", 60))


@pytest.fixture(scope="module")
def namespace(real: dict[str, str]) -> str:
    ok(kubectl(real, "create", "namespace", NAMESPACE))
    restricted = "pod-security.kubernetes.io/enforce=restricted"
    ok(kubectl(real, "label", "namespace", NAMESPACE, restricted))
    return NAMESPACE


def run_pod(
    env: dict[str, str], name: str, image: str, script: str, claim: str = "",
    labels: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Creates a restricted pod that runs `script` in sh (with the claim's volume at /data)."""
    container: dict[str, object] = {
        "name": name, "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", script],
        "securityContext": CONTAINER_SECURITY,
    }  # fmt: skip
    spec: dict[str, object] = {
        "restartPolicy": "Never", "securityContext": POD_SECURITY,
        "terminationGracePeriodSeconds": 1, "containers": [container],
    }  # fmt: skip
    if claim:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    metadata = {"name": name, "namespace": NAMESPACE, "labels": labels or {}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    ok(kubectl(env, "apply", "-f", "-", input=json.dumps(pod)))


def finished(env: dict[str, str], name: str) -> str:
    """The pod's final phase, once it has one."""

    def phase() -> str | None:
        now = in_namespace(env, "get", "pod", name, "-o", "jsonpath={.status.phase}").stdout
        return now if now in {"Succeeded", "Failed"} else None

    return str(wait_for(phase, f"pod {name} to finish", 120))


def logs(env: dict[str, str], name: str) -> str:
    return ok(in_namespace(env, "logs", name)).strip()


# Resolves the API server's Service through CoreDNS and connects to it through kube-proxy.
PROBE = """
read -r address _ <<EOF
$(getent hosts kubernetes.default.svc.cluster.local)
EOF
timeout 5 bash -c "exec 3<>/dev/tcp/$address/443" && echo "dns $address; service reached"
"""


def test_a_restricted_pod_runs_resolves_and_reaches_a_service(
    real: dict[str, str], namespace: str, image: str
) -> None:
    node = json.loads(ok(kubectl(real, "get", "node", NODE, "-o", "json")))
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    run_pod(real, "probe", image, PROBE)
    assert finished(real, "probe") == "Succeeded", logs(real, "probe")
    # The cluster's first `kubectl logs`: the API server's first connection to the kubelet (it
    # once failed when ci/cluster rewrote the apiserver's kubelet client certificate after the
    # apiserver had started).
    assert logs(real, "probe") == "dns 10.96.0.1; service reached"


def test_exec_runs_in_the_pod_as_its_user(real: dict[str, str], namespace: str, image: str) -> None:
    run_pod(real, "shell", image, "echo ready; exec sleep 600")
    ok(in_namespace(real, "wait", "--for=condition=Ready", "pod/shell", "--timeout=120s"))
    assert logs(real, "shell") == "ready"
    assert ok(in_namespace(real, "exec", "shell", "--", "id", "-u")).strip() == "1000"
    groups = ok(in_namespace(real, "exec", "shell", "--", "id", "-G")).split()
    assert "100" in groups
    ok(in_namespace(real, "delete", "pod", "shell", "--wait=false"))


def test_a_claim_on_the_default_class_outlives_its_pod(
    real: dict[str, str], namespace: str, image: str
) -> None:
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "notes", "namespace": NAMESPACE},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }  # fmt: skip
    ok(kubectl(real, "apply", "-f", "-", input=json.dumps(claim)))
    run_pod(real, "writer", image, 'echo "written by $(id -u)" > /data/note', claim="notes")
    assert finished(real, "writer") == "Succeeded", logs(real, "writer")

    bound = json.loads(ok(in_namespace(real, "get", "pvc", "notes", "-o", "json")))
    assert bound["status"]["phase"] == "Bound"
    assert bound["spec"]["storageClassName"] == "local-path"
    volume = json.loads(ok(kubectl(real, "get", "pv", bound["spec"]["volumeName"], "-o", "json")))
    folder = Path(volume["spec"]["hostPath"]["path"])
    # In the cluster's state dir (so `down` removes it), open to the pods' non-root user.
    assert folder.parent == Path(real["FACILITY_CLUSTER_DIR"]) / "volumes"
    assert folder.stat().st_mode & 0o777 == 0o777
    assert (folder / "note").stat().st_uid == 1000

    ok(in_namespace(real, "delete", "pod", "writer", "--wait=true"))
    run_pod(real, "reader", image, "cat /data/note", claim="notes")
    assert finished(real, "reader") == "Succeeded", logs(real, "reader")
    assert logs(real, "reader") == "written by 1000"

    # Deleting the claim deletes the volume's folder too (a helper pod as root, which may remove
    # what the pods' user wrote).
    ok(in_namespace(real, "delete", "pod", "reader", "--wait=true"))
    ok(in_namespace(real, "delete", "pvc", "notes", "--wait=true"))
    wait_for(lambda: not folder.exists(), "the volume's folder to be removed", 120)


# A TCP server in the Debian base's perl (perl-base has IO::Socket): a greeting per connection.
GREETER = """exec perl -MIO::Socket::INET -e '
  my $server = IO::Socket::INET->new(LocalPort => 8080, Listen => 8, ReuseAddr => 1) or die $!;
  while (my $client = $server->accept) { print $client "hello\\n"; close $client }'"""


def greeted(env: dict[str, str], pod: str, address: str) -> bool:
    """Whether `pod` gets the greeting from address:8080 within 3 seconds."""
    script = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/8080 && head -n 1 <&3'"
    done = in_namespace(env, "exec", pod, "--", "bash", "-c", script)
    return done.returncode == 0 and done.stdout.strip() == "hello"


def test_network_policies_are_enforced(real: dict[str, str], namespace: str, image: str) -> None:
    """kube-router's firewall on the node: a policy that admits only pods labelled role=friend to
    the server keeps every other pod out, and lets the friend in."""
    run_pod(real, "server", image, GREETER, labels={"app": "server"})
    for client, role in (("stranger", "stranger"), ("friend", "friend")):
        run_pod(real, client, image, "exec sleep 600", labels={"role": role})
    for pod in ("server", "stranger", "friend"):
        ok(in_namespace(real, "wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=120s"))
    address = ok(in_namespace(real, "get", "pod", "server", "-o", "jsonpath={.status.podIP}"))
    # No policy yet: the bridge lets everyone in.
    wait_for(lambda: greeted(real, "stranger", address), "the server to greet a stranger", 60)

    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "friends-only", "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}],
                              "ports": [{"port": 8080, "protocol": "TCP"}]}]},
    }  # fmt: skip
    ok(kubectl(real, "apply", "-f", "-", input=json.dumps(policy)))
    wait_for(
        lambda: not greeted(real, "stranger", address), "the policy to keep the stranger out", 60
    )
    assert greeted(real, "friend", address)
    assert not greeted(real, "stranger", address)

    ok(in_namespace(real, "delete", "networkpolicy", "friends-only"))
    wait_for(lambda: greeted(real, "stranger", address), "the stranger to be let in again", 60)
    ok(in_namespace(real, "delete", "pod", "server", "stranger", "friend", "--wait=false"))


def test_down_leaves_nothing(real: dict[str, str]) -> None:
    state = Path(real["FACILITY_CLUSTER_DIR"])
    pids = {name: int((state / "pids" / name).read_text()) for name in COMPONENTS}
    ports = cluster_ports(state)
    assert set(ports) >= {"API_SERVER_PORT", "KUBELET_PORT", "KUBE_ROUTER_HEALTH_PORT"}, ports
    down = cluster(real, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    # Nor any process of its pods (containerd's shims outlive containerd).
    leftovers = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True)
    assert leftovers.stdout == ""
    assert [name for name, port in ports.items() if listening(port)] == []
    assert not state.exists()
    assert str(state) not in Path("/proc/mounts").read_text()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert " cni0:" not in links
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-ROUTER" not in rules
    assert "KUBE-NWPLCY" not in rules
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cni-" not in namespaces
