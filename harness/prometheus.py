"""A real Prometheus (ci/tools builds it from its pinned Go module) on this machine, scraping one
release of the facility the way a site's Prometheus without prometheus-operator does: it finds
the release's Services and pods through the API server (Kubernetes service discovery, with the
cluster's kubeconfig) and scrapes what the chart's scrape annotations (`prometheus.io/scrape`,
`port`, `path`) name, plus the Dask schedulers' pods by their `dashboard` port. The hub's
endpoint gets the scraper's token (metrics.hub.tokenSecret), as the site's scrape job sends it.

The target labels are the ones the chart's dashboards and alerts select by, as
prometheus-operator's monitors would set them: `namespace`, `service`, `pod`, `job` (the
Service's name), and on a scheduler's series its cluster and owner
(`facility_hep_io_cluster`, `facility_hep_io_owner`).

It runs on the node itself (the real-node cluster), where the pods' addresses are routed;
the NetworkPolicies admit the node's own traffic, so this scraper does not exercise
`metrics.scraper` (tests/chart/test_monitoring.py checks those rules).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from harness import HarnessError
from harness.commands import stop, tool
from harness.net import free_port
from harness.wait import wait_for

COMPONENT = "__meta_kubernetes_service_label_app_kubernetes_io_component"
ANNOTATION = "__meta_kubernetes_service_annotation_prometheus_io_"
POD_LABEL = "__meta_kubernetes_pod_label_"


def _discovery(role: str, kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    where = {"kubeconfig_file": str(kubeconfig), "namespaces": {"names": [namespace]}}
    return [{"role": role, **where}]


def _target_labels(kind: str) -> list[dict[str, Any]]:
    """namespace, pod (and service and job, for a Service's endpoints), as the monitors set them."""
    rules: list[dict[str, Any]] = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    if kind == "service":
        rules += [
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        ]
    return rules


def _annotated_services(kubeconfig: Path, namespace: str, hub: bool) -> dict[str, Any]:
    """The Services that carry the chart's scrape annotations: the hub's alone (hub=True), whose
    job sends the scraper's token, or every other."""
    return {
        "job_name": "hub" if hub else "services",
        "kubernetes_sd_configs": _discovery("endpoints", kubeconfig, namespace),
        "relabel_configs": [
            {"source_labels": [ANNOTATION + "scrape"], "regex": "true", "action": "keep"},
            {
                "source_labels": [COMPONENT],
                "regex": "hub",
                "action": "keep" if hub else "drop",
            },
            # The annotated port, on the endpoint's address (one target per pod, however many
            # ports the Service has: identical targets are merged).
            {
                "source_labels": ["__address__", ANNOTATION + "port"],
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {
                "source_labels": [ANNOTATION + "path"],
                "regex": "(.+)",
                "target_label": "__metrics_path__",
            },
            *_target_labels("service"),
        ],
    }


def scrape_config(
    kubeconfig: Path, namespace: str, hub_token_file: Path, interval: str = "5s"
) -> dict[str, Any]:
    """Prometheus' configuration for one release in `namespace`."""
    hub = _annotated_services(kubeconfig, namespace, hub=True)
    hub["authorization"] = {"type": "Bearer", "credentials_file": str(hub_token_file)}
    schedulers = {
        "job_name": "dask-scheduler",
        "kubernetes_sd_configs": _discovery("pod", kubeconfig, namespace),
        "relabel_configs": [
            {
                "source_labels": [POD_LABEL + "app_kubernetes_io_component"],
                "regex": "dask-scheduler",
                "action": "keep",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": "dashboard",
                "action": "keep",
            },
            *_target_labels("pod"),
            # Its cluster and owner (podTargetLabels of the chart's PodMonitor).
            *(
                {"source_labels": [POD_LABEL + label], "target_label": label}
                for label in ("facility_hep_io_cluster", "facility_hep_io_owner")
            ),
        ],
    }
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            hub,
            _annotated_services(kubeconfig, namespace, hub=False),
            schedulers,
        ],
    }


class Prometheus:
    """One Prometheus server on a loopback port, its data and log in `folder`."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.config = config
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.began = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "prometheus.log"

    def start(self, timeout: float = 60) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.began = time.monotonic()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise HarnessError(f"prometheus exited {self.process.returncode}:\n{self.tail()}")
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=timeout, what="Prometheus ready", details=self.tail)

    def uptime(self) -> float:
        """Seconds since start: the window a query over everything scraped spans."""
        return time.monotonic() - self.began

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:]) if self.log.exists() else ""

    def api(self, path: str, **params: Any) -> Any:
        """An answer of Prometheus' HTTP API (its `data`); fails with Prometheus' error."""
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = answer.json()
        if body.get("status") != "success":
            raise HarnessError(f"Prometheus /api/v1/{path} {params}: {answer.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{metric: {...}, value: [time, "number"]}, ...]."""
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The one number of a query that aggregates to a single series; None when empty."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
