"""The operator's configuration: the chart's values, whole, as the chart mounts them.

The chart hands the operator the hub's values Secret (`values.yaml`, `release.yaml`) and the
release's full name and namespace in the environment; everything else is read from the values
here, so that no Python is templated by Helm (DESIGN.md, "Values reach Python whole").
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VALUES_DIR = Path("/etc/facility/values")
SCHEDULER_URL = "http://{scheduler}.{namespace}.svc:{port}"
BATCH_BACKENDS = ("slurm", "htcondor")  # the backends whose jobs run as a batch user


def _snake_case(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def component_name(fullname: str, component: str) -> str:
    """The chart's name of one component's object (facility.componentName in _helpers.tpl)."""
    return f"{fullname[:50].rstrip('-')}-{component}"


def image_ref(registry: str, image: Mapping[str, Any], app_version: str) -> str:
    """An image reference from {repository, tag}, as the chart's facility.image builds it."""
    repository = str(image["repository"])
    if registry:
        repository = f"{registry.rstrip('/')}/{repository}"
    return f"{repository}:{image.get('tag') or app_version}"


@dataclass(frozen=True)
class Settings:
    """What the operator and its user API need to know about the facility."""

    namespace: str
    fullname: str
    release: str  # the Helm release's name (the chart's app.kubernetes.io/instance label)
    dask_domain: str  # edge.dask.domain: clusters are tls://<id>.<domain>:<public_port>
    public_port: int  # edge.service.port
    hub_api_url: str  # e.g. http://<fullname>-hub.<namespace>:<hub.port>/hub/api
    worker_image: str  # the default image of schedulers and workers
    worker_image_pull_policy: str
    image_pull_secrets: tuple[str, ...]
    default_backend: str  # htcondor, slurm or kubernetes
    backends: Mapping[str, Mapping[str, Any]]  # operator.backends: each backend's values
    quotas: Mapping[str, Any]  # {default: {clusters, workers, cores}, users: {}, groups: {}}
    idle_timeout: int  # seconds; a cluster's default idleTimeout
    max_idle_timeout: int  # seconds; the most a user may ask for (0: no limit)
    sweep_interval: float  # seconds between two sweeps of orphaned batch jobs
    status_interval: float  # seconds between two status updates of a cluster
    api_port: int
    metrics_port: int  # where the site's scraper reads the operator's /metrics (metrics.py)
    edge_routes_port: int  # where the edge's HTTP provider polls its Dask routes (edge_routes)
    scheduler_resources: Mapping[str, Any]
    worker_interval: float  # seconds between two looks at a cluster's workers
    max_start_failures: (
        int  # workers in a row that end before connecting, then no more (0: no limit)
    )
    # The schedulers' dashboards as the operator reaches them: a str.format template of
    # scheduler, cluster_id, namespace and port (tests point it at a scheduler on loopback).
    scheduler_url: str
    xcache: str  # root://host:port of the facility's XCache, or "" when it does not run
    batch_users: Mapping[str, Any]  # operator.batchUsers: {rule, table} (batch_users.py)
    # The SLURM backend's JWT key in the operator's pod (FACILITY_SLURM_JWT_KEY_FILE, set by
    # the chart where backends.slurm.jwtKeySecret is), or "".
    slurm_jwt_key_file: str = ""
    # XCache's TLS Secret (xcache.tls.secretName), whose ca.crt a cluster's pods trust, or "".
    xcache_tls_secret: str = ""

    @property
    def ca_secret(self) -> str:
        """The facility CA's Secret (operators/README.md, TLS)."""
        return f"{self.fullname}-dask-ca"

    @property
    def usage_config_map(self) -> str:
        """Where the operator keeps the users' usage (usage.py); the chart's Role names it."""
        return component_name(self.fullname, "operator-usage")

    def backend_config(self, backend: str) -> dict[str, Any]:
        """One backend's values from the chart as the backends read them: keys in snake_case
        (edgeHost -> edge_host), empty strings and nulls left out (unset)."""
        values = self.backends.get(backend) or {}
        config = {_snake_case(k): v for k, v in values.items() if v not in ("", None)}
        if backend in BATCH_BACKENDS:
            config["batch_users"] = dict(self.batch_users)
        if backend == "slurm" and self.slurm_jwt_key_file:
            config["jwt_key_file"] = self.slurm_jwt_key_file
        return config

    @classmethod
    def from_values(
        cls,
        values: Mapping[str, Any],
        release_fullname: str,
        namespace: str,
        app_version: str = "latest",
        release_name: str = "",
    ) -> Settings:
        """Settings from the chart's values (app_version: the default image tag; release_name:
        the Helm release, when it differs from release_fullname)."""
        operator = values["operator"]
        edge = values["edge"]
        xcache = values.get("xcache") or {}
        xcache_address = xcache_tls_secret = ""
        if xcache.get("enabled"):
            host = f"{component_name(release_fullname, 'xcache')}.{namespace}"
            xcache_address = f"root://{host}:{xcache['port']}"
            xcache_tls_secret = str((xcache.get("tls") or {}).get("secretName") or "")
        hub = component_name(release_fullname, "hub")
        worker_image = operator["worker"]["image"]
        return cls(
            namespace=namespace,
            fullname=release_fullname,
            release=release_name or release_fullname,
            dask_domain=str(edge["dask"]["domain"]),
            public_port=int(edge["service"]["port"]),
            hub_api_url=f"http://{hub}.{namespace}:{values['hub']['port']}/hub/api",
            worker_image=image_ref(values.get("imageRegistry", ""), worker_image, app_version),
            worker_image_pull_policy=str(worker_image.get("pullPolicy", "IfNotPresent")),
            image_pull_secrets=tuple(values.get("imagePullSecrets") or ()),
            default_backend=str(operator["backend"]),
            backends={name: dict(config or {}) for name, config in operator["backends"].items()},
            quotas=dict(operator["quotas"]),
            idle_timeout=int(operator["idleTimeout"]["default"]),
            max_idle_timeout=int(operator["idleTimeout"]["max"]),
            sweep_interval=float(operator["sweepInterval"]),
            status_interval=float(operator["statusInterval"]),
            api_port=int(operator["apiPort"]),
            metrics_port=int(operator["metricsPort"]),
            edge_routes_port=int(operator["edgeRoutesPort"]),
            scheduler_resources=dict(operator["scheduler"]["resources"]),
            worker_interval=float(operator["workers"]["interval"]),
            max_start_failures=int(operator["workers"]["maxStartFailures"]),
            scheduler_url=SCHEDULER_URL,
            xcache=xcache_address,
            xcache_tls_secret=xcache_tls_secret,
            batch_users=dict(operator["batchUsers"]),
        )

    @classmethod
    def from_env(cls) -> Settings:
        """Settings in the operator's pod: FACILITY_VALUES_DIR (its values ConfigMap, mounted),
        FACILITY_FULLNAME and FACILITY_NAMESPACE (set by the chart's Deployment); for tests,
        FACILITY_HUB_API_URL and FACILITY_SCHEDULER_URL (a template, see scheduler_url)."""
        directory = Path(os.environ.get("FACILITY_VALUES_DIR", VALUES_DIR))
        values = yaml.safe_load((directory / "values.yaml").read_text()) or {}
        release_file = directory / "release.yaml"
        release = yaml.safe_load(release_file.read_text()) if release_file.exists() else {}
        settings = cls.from_values(
            values,
            release_fullname=os.environ["FACILITY_FULLNAME"],
            namespace=os.environ["FACILITY_NAMESPACE"],
            app_version=str((release or {}).get("appVersion") or "latest"),
            release_name=str((release or {}).get("name") or ""),
        )
        # Tests only: an operator outside a cluster reaches the hub and the schedulers on
        # loopback (the chart sets neither).
        overrides = {
            field: os.environ[variable]
            for field, variable in (("hub_api_url", "FACILITY_HUB_API_URL"),
                                    ("scheduler_url", "FACILITY_SCHEDULER_URL"))
            if os.environ.get(variable)
        }  # fmt: skip
        if os.environ.get("FACILITY_SLURM_JWT_KEY_FILE"):
            overrides["slurm_jwt_key_file"] = os.environ["FACILITY_SLURM_JWT_KEY_FILE"]
        return dataclasses.replace(settings, **overrides)
