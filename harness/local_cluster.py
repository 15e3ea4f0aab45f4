"""The ports of a local cluster of ci/cluster, read from its state folder.

`ci/cluster up` writes every port the cluster listens on into <state>/ports.env, one KEY=port a
line: API_SERVER_PORT, ETCD_PORT, ETCD_PEER_PORT, CONTROLLER_MANAGER_PORT, SCHEDULER_PORT, and
KWOK_PORT (kwok nodes) or the real node's KUBELET_PORT, KUBELET_HEALTHZ_PORT,
KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT, KUBE_ROUTER_HEALTH_PORT. Reading them, rather
than adding offsets to FACILITY_CLUSTER_PORT_BASE, keeps ci/cluster the one place that knows
how its ports are chosen.
"""

from __future__ import annotations

from pathlib import Path

PORTS_FILE = "ports.env"


def cluster_ports(cluster_dir: Path | str) -> dict[str, int]:
    """Every port of the cluster whose state folder is CLUSTER_DIR, by name.

    Raises FileNotFoundError if no cluster was started there, and ValueError on a line that is
    not KEY=port.
    """
    path = Path(cluster_dir) / PORTS_FILE
    ports: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        key, equals, value = line.partition("=")
        if not (key and equals and value.isdigit()):
            raise ValueError(f"{path}:{number}: not KEY=port: {line!r}")
        ports[key] = int(value)
    return ports
