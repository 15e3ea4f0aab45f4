"""Smoke tests of the images that ci/images builds (make images), run in its Docker engine.

Each image runs as uid 1000 (as the chart runs it), with every capability dropped, and the
hub, proxy and edge on a read-only root filesystem, as the chart runs them. Beyond importing
its stack, each one does its job: the hub image starts with the chart's configuration behind the
proxy image; JupyterLab serves its page and the Dask panel's API; a real `dask worker` from the
worker image computes for a client in the analysis image, through a `dask scheduler` from the
worker image; the analysis and worker images carry the same versions of every package they share.

Containers that serve use the host's network on loopback ports; the others have no network.
The tests fail (not skip) when an image is not built or is out of date.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.chart import merge_values
from harness.hub import local_overrides, write_config_dir
from harness.net import free_port, http_get
from harness.paths import ROOT
from harness.wait import wait_for

pytestmark = pytest.mark.images

IMAGES = ("hub", "proxy", "traefik", "analysis", "worker", "operator")
SHARED_STACK = ("dask", "distributed", "coffea", "awkward", "uproot", "hist", "numpy", "xrootd")
# As the chart runs its pods: restricted, no privilege, no capability.
RESTRICTED = ["--cap-drop=ALL", "--security-opt=no-new-privileges"]
# The chart's hub, proxy and edge also have a read-only root (and an emptyDir on /tmp).
READ_ONLY = ["--read-only", "--tmpfs=/tmp"]


def ci_images(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "ci" / "images"), *args], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


class Engine:
    """The Docker engine of ci/images and the references of its images."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, "DOCKER_HOST": env["DOCKER_HOST"]}
        self.prefix = env["FACILITY_IMAGE_PREFIX"]
        self.tag = env["FACILITY_IMAGE_TAG"]

    def ref(self, name: str) -> str:
        return f"{self.prefix}/{name}:{self.tag}"

    def docker(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)  # fmt: skip
        if check and done.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {done.returncode}:\n"
                        f"{done.stdout}\n{done.stderr}")  # fmt: skip
        return done

    def run(self, name: str, *command: str, options: Sequence[str] = (), **kwargs: object) -> str:
        """The output of a command in a fresh container of an image (no network)."""
        args = ["run", "--rm", "--network=none", *RESTRICTED, *options, self.ref(name), *command]
        return self.docker(*args, **kwargs).stdout  # type: ignore[arg-type]

    def python(self, name: str, code: str, options: Sequence[str] = ()) -> str:
        return self.run(name, "python3", "-c", code, options=options)

    @contextmanager
    def serve(self, name: str, *command: str, options: Sequence[str] = ()) -> Iterator[str]:
        """A container on the host's network (loopback ports), removed at the end; its id."""
        container = f"facility-test-{name}-{uuid.uuid4().hex[:8]}"
        self.docker("run", "--detach", f"--name={container}", "--network=host", *RESTRICTED,
                    *options, self.ref(name), *command)  # fmt: skip
        try:
            yield container
        finally:
            self.docker("rm", "--force", container, check=False)

    def logs(self, container: str) -> str:
        done = self.docker("logs", container, check=False)
        return done.stdout + done.stderr


@pytest.fixture(scope="session")
def engine() -> Engine:
    """Fails, naming the fix, when the engine is down or an image is not built or out of date."""
    status = ci_images("status", *IMAGES)
    if status.returncode != 0:
        pytest.fail(f"the images are not built or not current: run `make images`\n"
                    f"{status.stdout}{status.stderr}")  # fmt: skip
    env = dict(line.split("=", 1) for line in ci_images("env").stdout.splitlines())
    return Engine(env)


def pip_list(engine: Engine, name: str) -> dict[str, str]:
    packages = json.loads(engine.run(name, "pip", "list", "--format=json"))
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in packages}


def answers_200(url: str) -> bool:
    answer = http_get(url)
    return answer is not None and answer[0] == 200


def ok(url: str) -> str:
    """The body of a GET that must answer 200."""
    answer = http_get(url)
    assert answer is not None, f"nothing answers at {url}"
    assert answer[0] == 200, f"{url}: {answer[0]} {answer[1][:500]}"
    return answer[1]


def pins(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(line.split("==") for line in lines if line)


# --- every image ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_uid_1000_not_root(engine: Engine, name: str) -> None:
    user = engine.docker("image", "inspect", "-f", "{{.Config.User}}", engine.ref(name)).stdout
    assert user.strip().split(":")[0] == "1000", f"{name}: USER is {user.strip()!r}"
    ids = engine.run(name, "-c", "id -u; id -g", options=["--entrypoint=/bin/sh"]).split()
    assert ids[0] == "1000"
    assert ids[1] == ("100" if name in ("analysis", "worker") else "1000")


# --- hub and proxy -------------------------------------------------------------------------------


def test_hub_versions_and_config(engine: Engine) -> None:
    project = tomllib.loads((ROOT / "hub_config" / "pyproject.toml").read_text())["project"]
    hub_pins = dict(p.split("==") for p in project["dependencies"])
    assert engine.run("hub", "jupyterhub", "--version", options=READ_ONLY).strip() == \
        hub_pins["jupyterhub"]  # fmt: skip
    code = (
        "import hub_config.config, hub_config.secret, kubespawner, oauthenticator,"
        " jupyterhub_idle_culler, importlib.metadata as m, pathlib;"
        " print(pathlib.Path('/usr/local/etc/jupyterhub/jupyterhub_config.py').read_text());"
        " print(m.version('jupyterhub-kubespawner'), m.version('oauthenticator'))"
    )
    out = engine.python("hub", code, options=READ_ONLY)
    assert (ROOT / "images/hub/jupyterhub_config.py").read_text() in out
    assert out.split()[-2:] == [hub_pins["jupyterhub-kubespawner"], hub_pins["oauthenticator"]]


def test_proxy_version(engine: Engine) -> None:
    wanted = json.loads((ROOT / "images/proxy/package.json").read_text())["dependencies"]
    out = engine.run("proxy", "configurable-http-proxy", "--version", options=READ_ONLY)
    assert out.strip() == wanted["configurable-http-proxy"]


def test_hub_starts_behind_the_proxy_with_the_chart_configuration(
    engine: Engine, tmp_path: Path
) -> None:
    """The chart's hub and proxy containers, as the chart starts them, on loopback ports."""
    proxy_port, api_port, hub_port = free_port(), free_port(), free_port()
    values = merge_values(
        local_overrides(tmp_path, proxy_port, api_port, hub_port),
        {"devMode": True, "hub": {"config": {"JupyterHub": {
            "db_url": "sqlite:////srv/jupyterhub/jupyterhub.sqlite"}}}},
    )  # fmt: skip
    config_dir = write_config_dir(tmp_path, values)
    token = uuid.uuid4().hex
    secrets = [f"--env=CONFIGPROXY_AUTH_TOKEN={token}", f"--env=JPY_COOKIE_SECRET={'ab' * 32}",
               f"--env=JUPYTERHUB_CRYPT_KEY={'cd' * 32}"]  # fmt: skip
    hub_url = f"http://127.0.0.1:{hub_port}"
    # The chart's proxy command, on loopback.
    proxy_command = ["configurable-http-proxy", "--ip=127.0.0.1", f"--port={proxy_port}",
                     "--api-ip=127.0.0.1", f"--api-port={api_port}",
                     f"--default-target={hub_url}",
                     f"--error-target={hub_url}/hub/error"]  # fmt: skip
    hub_options = [*READ_ONLY, *secrets, "--env=FACILITY_CONFIG_DIR=/etc/facility",
                   f"--volume={config_dir}:/etc/facility:ro",
                   "--tmpfs=/srv/jupyterhub:uid=1000,gid=1000"]  # fmt: skip
    with (
        engine.serve("proxy", *proxy_command, options=[*READ_ONLY, *secrets]) as proxy,
        engine.serve("hub", options=hub_options) as hub,
    ):
        public = f"http://127.0.0.1:{proxy_port}"
        assert wait_for(lambda: http_get(f"{public}/_chp_healthz"), "the proxy", timeout=60)

        try:
            wait_for(lambda: answers_200(f"{public}/hub/health"), "/hub/health via the proxy", 120)
        except BaseException:
            print(engine.logs(hub), engine.logs(proxy))
            raise
        # The hub serves its login page through the proxy.
        assert "username" in ok(f"{public}/hub/login")
        assert "facility configuration error" not in engine.logs(hub)


# --- edge ----------------------------------------------------------------------------------------


def test_traefik_version_and_ping(engine: Engine) -> None:
    versions = (ROOT / "ci/versions").read_text()
    wanted = re.search(r"^TRAEFIK_VERSION=(\S+)", versions, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert f"Version:      {wanted}" in engine.run("traefik", "version", options=READ_ONLY)
    port = free_port()
    args = [f"--entryPoints.traefik.address=127.0.0.1:{port}", "--ping=true",
            "--ping.entryPoint=traefik", "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false"]  # fmt: skip
    with engine.serve("traefik", *args, options=READ_ONLY):
        answer = wait_for(lambda: http_get(f"http://127.0.0.1:{port}/ping"), "traefik /ping")
        assert answer == (200, "OK")


# --- analysis and worker -------------------------------------------------------------------------

STACK_CHECK = """
import json, os, subprocess, sys
import awkward as ak, coffea, dask, distributed, fsspec, hist, numpy as np, uproot
import facility_client
from coffea import processor
from coffea.nanoevents import NanoEventsFactory
from XRootD import client as xrootd_client
# root:// is served by fsspec-xrootd, for uproot and fsspec alike.
root_fs = fsspec.filesystem("root", hostid="localhost:1094")
assert type(root_fs).__module__.startswith("fsspec_xrootd"), type(root_fs)
xrootd_client.FileSystem("root://localhost:1094")
# A ROOT file written and read back with uproot, filled into a hist.
with uproot.recreate("/tmp/t.root") as f:
    f["events"] = {"pt": np.array([10.0, 20.0, 30.0])}
pt = uproot.open("/tmp/t.root")["events"]["pt"].array()
h = hist.Hist.new.Reg(3, 0, 60, name="pt").Double().fill(ak.to_numpy(pt))
xrdcp = subprocess.run(["xrdcp", "--version"], capture_output=True, text=True, check=True)
print(json.dumps({"sum": float(ak.sum(pt)), "entries": float(h.sum()),
                  "xrdcp": (xrdcp.stdout + xrdcp.stderr).strip()}))
"""


@pytest.mark.parametrize("name", ["analysis", "worker"])
def test_scientific_stack_imports_and_works(engine: Engine, name: str) -> None:
    out = json.loads(engine.python(name, STACK_CHECK).splitlines()[-1])
    assert out["sum"] == 60.0
    assert out["entries"] == 3.0
    assert out["xrdcp"].startswith("v5."), out["xrdcp"]


def test_no_version_skew_between_analysis_and_worker(engine: Engine) -> None:
    """Everything the worker image has, the analysis image has at the same version; both match
    images/requirements/science.txt, the one place the shared stack is pinned."""
    analysis, worker = pip_list(engine, "analysis"), pip_list(engine, "worker")
    skew = {n: (analysis.get(n), v) for n, v in worker.items() if analysis.get(n) != v}
    assert not skew, f"packages that differ (analysis, worker): {skew}"
    science = pins(ROOT / "images/requirements/science.txt")
    for name in SHARED_STACK:
        assert name in science, f"{name} is not pinned in science.txt"
    wrong = {n: (v, worker.get(n)) for n, v in science.items() if worker.get(n) != v}
    assert not wrong, f"installed differently from science.txt (pinned, installed): {wrong}"
    # jupyterhub-singleuser in the analysis image speaks to the hub: the same version.
    hub = pip_list(engine, "hub")
    assert analysis["jupyterhub"] == hub["jupyterhub"]


# --- Dask: the operator, the scheduler pods, the notebooks' Dask panel -------------------------


def slurm_client(engine: Engine, image: str, *commands: str) -> str:
    """The version of Debian's slurm-client in the image, after checking its commands exist."""
    script = f"command -v {' '.join(commands)} >/dev/null"
    script += " && dpkg-query -W -f='${Version}' slurm-client"
    return engine.run(image, "-c", script, options=["--entrypoint=/bin/sh"]).strip()


def test_operator_image_runs_the_operator_and_its_backends(engine: Engine) -> None:
    out = engine.python(
        "operator",
        "import kopf, facility_operator.handlers, facility_operator.api, htcondor2, "
        "facility_operator.backends.slurm, facility_operator.backends.htcondor; print('ok')",
    )
    assert out.strip().endswith("ok")
    # The operator submits, watches and cancels SLURM workers with sbatch, scontrol and scancel
    # (which refuse to run without a site's slurm.conf: their presence and the package are
    # checked). HTCondor goes through the bindings: no condor_submit in any image.
    assert slurm_client(engine, "operator", "sbatch", "scontrol", "scancel").startswith("22.05")
    for image in ("operator", "worker", "analysis"):
        found = engine.run(image, "-c", "command -v condor_submit || echo none",
                           options=["--entrypoint=/bin/sh"])  # fmt: skip
        assert found.strip() == "none", image


def test_worker_image_runs_schedulers_and_workers_with_no_batch_tools(engine: Engine) -> None:
    out = engine.python(
        "worker", "import facility_client.scheduler, facility_client.worker; print('ok')"
    )
    assert out.strip().endswith("ok")
    # The scheduler makes no worker: no batch-system tool, no Kubernetes client in its image.
    found = engine.run("worker", "-c", "command -v sbatch squeue scancel || echo none",
                       options=["--entrypoint=/bin/sh"])  # fmt: skip
    assert found.strip() == "none"


def test_dask_panel_makes_facility_clusters(engine: Engine) -> None:
    """The "new cluster" button of dask-labextension makes a FacilityCluster."""
    out = engine.python(
        "analysis",
        "import dask, json; print(json.dumps(dask.config.get('labextension.factory')))",
    )
    factory = json.loads(out.splitlines()[-1])
    assert (factory["module"], factory["class"]) == ("facility_client.cluster", "FacilityCluster")


def test_worker_image_has_no_jupyterlab(engine: Engine) -> None:
    assert "jupyterlab" not in pip_list(engine, "worker")


def test_jupyterlab_lists_dask_labextension_enabled(engine: Engine) -> None:
    def jupyter(*args: str) -> str:
        done = engine.docker("run", "--rm", "--network=none", *RESTRICTED, engine.ref("analysis"),
                             "jupyter", *args)  # fmt: skip
        # jupyter prints its lists on stderr, coloured.
        return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)

    labextensions = jupyter("labextension", "list")
    assert re.search(r"dask-labextension v\S+ enabled OK", labextensions), labextensions
    server_extensions = jupyter("server", "extension", "list")
    assert re.search(r"dask_labextension enabled", server_extensions), server_extensions


def test_jupyterlab_serves_the_lab_and_the_dask_panel_api(engine: Engine) -> None:
    port, token = free_port(), uuid.uuid4().hex
    command = ["jupyter", "lab", "--ip=127.0.0.1", f"--port={port}", "--no-browser",
               f"--IdentityProvider.token={token}"]  # fmt: skip
    with engine.serve("analysis", *command) as lab:
        base = f"http://127.0.0.1:{port}"
        try:
            page = wait_for(lambda: http_get(f"{base}/lab?token={token}"), "JupyterLab", 120)
        except BaseException:
            print(engine.logs(lab))
            raise
        assert page[0] == 200  # type: ignore[index]
        assert "<title>JupyterLab</title>" in page[1]  # type: ignore[index]
        # The Dask panel's server side (dask-labextension's cluster manager) answers.
        assert json.loads(ok(f"{base}/dask/clusters?token={token}")) == []
        # The server copied the facility's examples into the home at its start.
        listing = json.loads(ok(f"{base}/api/contents/examples/agc?token={token}"))
        names = {entry["name"] for entry in listing["content"]}
        assert {"ttbar.ipynb", "ttbar.py"} <= names, names


CLIENT = """
import json, sys
import dask.array as da
from distributed import Client

def on_worker():
    import os
    import awkward as ak
    return os.getuid(), float(ak.sum(ak.Array([[1, 2], [], [3]])))

with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(1, timeout=60)
    # Raises if client, scheduler and worker disagree on a package that must match.
    client.get_versions(check=True)
    total = int(da.arange(10_000, chunks=1_000).sum().compute())
    uid, total_ak = client.submit(on_worker, pure=False).result()
    workers = list(client.scheduler_info()["workers"].values())
    print(json.dumps({"total": total, "uid": uid, "ak": total_ak, "n": len(workers),
                      "name": workers[0]["name"]}))
"""


def test_dask_worker_computes_for_a_client_in_the_analysis_image(engine: Engine) -> None:
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_command = ["dask", "scheduler", "--host=127.0.0.1", f"--port={port}",
                         f"--dashboard-address=127.0.0.1:{dashboard}"]  # fmt: skip
    worker_command = ["dask", "worker", address, "--host=127.0.0.1", "--nworkers=1",
                      "--nthreads=1", "--name=smoke", "--no-dashboard"]  # fmt: skip
    with engine.serve("worker", *scheduler_command) as scheduler:
        health = f"http://127.0.0.1:{dashboard}/health"
        wait_for(lambda: http_get(health) == (200, "ok"), "the scheduler's /health", 60)
        with engine.serve("worker", *worker_command) as worker:
            done = engine.docker("run", "--rm", "--network=host", *RESTRICTED,
                                 engine.ref("analysis"), "python3", "-c", CLIENT, address,
                                 check=False, timeout=180)  # fmt: skip
            if done.returncode != 0:
                logs = [f"--- {c}:\n{engine.logs(c)}" for c in (scheduler, worker)]
                pytest.fail("the client failed:\n" + "\n".join([done.stderr, *logs]))
            result = json.loads(done.stdout.splitlines()[-1])
        # The dashboard (bokeh) of the worker image's scheduler serves.
        assert ok(f"http://127.0.0.1:{dashboard}/status")
    assert result == {"total": 49_995_000, "uid": 1000, "ak": 6.0, "n": 1, "name": "smoke"}
