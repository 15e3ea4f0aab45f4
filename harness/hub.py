"""A real JupyterHub and configurable-http-proxy on loopback, configured as in the chart.

The hub gets exactly what the chart hands it: the values file is rendered with helm and the
hub-values Secret is written to a folder that plays the mounted Secret. Only what differs outside
a cluster (addresses, the database file) is added to the values, through hub.config, as a site
could do. The proxy is its own process, as it is its own Deployment in the chart.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import HarnessError
from harness.chart import handed_over, merge_values
from harness.net import free_port, http_get
from harness.paths import KUBECONFIG, NODE_DIR, ROOT
from harness.wait import wait_for

NODE_BIN = NODE_DIR / "node_modules" / ".bin"
HUB_CONFIG_FILE = ROOT / "images" / "hub" / "jupyterhub_config.py"


@dataclass
class Hub:
    url: str  # the public URL, through the proxy: http://127.0.0.1:<port>
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def local_overrides(workdir: Path, proxy_port: int, api_port: int, hub_port: int) -> dict[str, Any]:
    """What a hub outside a cluster needs on top of the chart's values."""
    return {
        "auth": {"callbackUrl": f"http://127.0.0.1:{proxy_port}/hub/oauth_callback"},
        "hub": {
            "config": {
                "JupyterHub": {
                    "bind_url": f"http://127.0.0.1:{proxy_port}",
                    "hub_bind_url": f"http://127.0.0.1:{hub_port}",
                    "hub_connect_url": f"http://127.0.0.1:{hub_port}",
                    "db_url": f"sqlite:///{workdir / 'jupyterhub.sqlite'}",
                },
                "ConfigurableHTTPProxy": {"api_url": f"http://127.0.0.1:{api_port}"},
            }
        },
    }


def write_config_dir(workdir: Path, values: Mapping[str, Any]) -> Path:
    """The hub-values Secret of the chart rendered with these values, as the hub's folder."""
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    facility = handed_over(values_file)
    config_dir = workdir / "config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "values.yaml").write_text(yaml.safe_dump(facility.values))
    (config_dir / "release.yaml").write_text(yaml.safe_dump(facility.release))
    return config_dir


@contextmanager
def run_hub(tmp_path: Path, values: Mapping[str, Any], proxy_port: int) -> Iterator[Hub]:
    """Start proxy and hub; stop both at the end. Fails with the hub's log if it does not start.

    proxy_port is the public port, chosen by the caller (the OAuth client's redirect URI,
    registered at the provider beforehand, contains it).
    """
    workdir = tmp_path / "hub"
    workdir.mkdir(parents=True, exist_ok=True)
    api_port, hub_port = free_port(), free_port()
    all_values = merge_values(values, local_overrides(workdir, proxy_port, api_port, hub_port))
    config_dir = write_config_dir(workdir, all_values)

    secret_env = {
        # The hub secret's keys, as the chart's Deployment passes them.
        "JPY_COOKIE_SECRET": secrets.token_hex(32),
        "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
    }
    base_env = {
        **os.environ,
        **secret_env,
        "FACILITY_CONFIG_DIR": str(config_dir),
        "KUBECONFIG": str(KUBECONFIG),
    }
    log_path = workdir / "hub.log"
    hub_url = f"http://127.0.0.1:{hub_port}"
    with log_path.open("wb") as log:
        proxy = subprocess.Popen(
            [str(NODE_BIN / "configurable-http-proxy"), "--ip=127.0.0.1", f"--port={proxy_port}",
             "--api-ip=127.0.0.1", f"--api-port={api_port}", f"--default-target={hub_url}",
             f"--error-target={hub_url}/hub/error"],
            stdout=log, stderr=subprocess.STDOUT, env=base_env,
        )  # fmt: skip
        hub = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG_FILE)],
            stdout=log, stderr=subprocess.STDOUT, env=base_env, cwd=workdir,
        )  # fmt: skip
    public = f"http://127.0.0.1:{proxy_port}"
    try:

        def healthy() -> bool:
            if hub.poll() is not None:
                log = log_path.read_text()[-4000:]
                raise HarnessError(f"the hub exited ({hub.returncode}):\n{log}")
            answer = http_get(f"{public}/hub/health", timeout=2)
            # The hub answers before it has added its services' routes to the proxy; it says
            # when it has (a service that does not answer, e.g. the operator's API outside a
            # cluster, delays that by its check).
            started = "JupyterHub is now running" in log_path.read_text(errors="replace")
            return answer is not None and answer[0] == 200 and started

        wait_for(healthy, "the hub, through the proxy", 60)
        yield Hub(url=public, log_path=log_path)
    finally:
        for process in (hub, proxy):
            process.terminate()
        for process in (hub, proxy):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
