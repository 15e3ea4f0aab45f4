"""`FacilityCluster`: a Dask cluster of the facility, asked for through the operator's user API.

    from facility_client.cluster import FacilityCluster
    with FacilityCluster(cores=2, memory="4Gi") as cluster, cluster.get_client() as client:
        cluster.adapt(minimum=0, maximum=50)
        ...

It talks to the user API of operators/README.md: the base URL from $FACILITY_OPERATOR_URL, the
user's JupyterHub token from $JUPYTERHUB_API_TOKEN (both set in every notebook pod). Creating
one POSTs a cluster, waits until the operator reports it Running, fetches its TLS credentials
and connects to the scheduler's public address by mutual TLS through the edge. `scale(n)` and
`adapt(minimum, maximum)` ask the API, and the operator makes or retires the workers (the
scheduler makes none); `close()` deletes the cluster. `FacilityCluster.from_name(id)` connects
to an existing one. `workers()` lists the cluster's workers as the operator sees them (state,
and why one waits or ended), `logs(name)` the end of one worker's log.

Worker groups: `worker_groups=[{"name": "gpu", "gpus": 1, "cores": 4, "maxWorkers": 2}]` adds
named groups beside the default one; `scale(n, group="gpu")` sizes one of them, and a GPU
worker offers the Dask resource `GPU` (`client.submit(f, resources={"GPU": 1})`).

The user's bearer token (the file that WLCG discovery finds, which `facility-token` keeps fresh
in the notebook) is shared with the cluster's pods, so that workers read XCache as the user: at
start, again whenever the file changes (checked every TOKEN_CHECK_SECONDS), or by
`share_token()`.

It is also dask-labextension's cluster factory (images/analysis/dask-labextension.yaml).

Where the public name `<cluster-id>.<dask-domain>` does not resolve (no wildcard DNS), pass
`edge_host`: the client dials that host at the public port (or at the port it names,
`host:port`, e.g. a node port) and sends the cluster's name as SNI. From outside the facility
(a laptop), with a token from the hub's token page:

    FacilityCluster(api_url="https://<hub>/services/dask", api_token=token, edge_host="<edge>")

In a notebook of the facility it defaults to $FACILITY_EDGE_HOST, the edge's in-cluster
Service (set by the hub's spawner), so `FacilityCluster()` needs no argument there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from distributed.core import Status, rpc
from distributed.deploy import Cluster

from facility_client import tokens
from facility_client.security import ClusterSecurity, client_security

log = logging.getLogger(__name__)

# The scheduler pod starts in seconds where the worker image is cached; pulling it first can
# take minutes.
DEFAULT_TIMEOUT = 300
POLL_SECONDS = 1.0
TOKEN_CHECK_SECONDS = 60.0


class FacilityError(RuntimeError):
    """The user API refused a request; `field` names the part of the request to blame."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}{f', field {field}' if field else ''})")
        self.status = status
        self.field = field


@dataclass(frozen=True)
class ScaleRange:
    """What `adapt` returns: the range the API was asked for (dask-labextension shows it)."""

    minimum: int
    maximum: int


def edge_address(edge_host: str, public_port: int | None) -> str:
    """The address to dial for `edge_host`: `host` at the public port, or `host:port`."""
    given = urlsplit(f"//{edge_host}")
    return f"tls://{given.hostname}:{given.port or public_port}"


def quantity(value: int | str) -> str:
    """A Kubernetes quantity from what Dask users write: bytes, `4GiB`, `4 GB`, or `4Gi`."""
    return str(value).replace(" ", "").removesuffix("B")


class FacilityCluster(Cluster):
    """A Dask cluster run by the facility's operator; its workers are batch jobs."""

    def __init__(
        self,
        backend: str | None = None,
        cores: int | None = None,
        memory: int | str | None = None,
        disk: int | str | None = None,
        image: str | None = None,
        idle_timeout: int | None = None,
        *,
        gpus: int | None = None,
        worker_groups: list[dict[str, Any]] | None = None,
        name: str | None = None,
        edge_host: str | None = None,
        api_url: str | None = None,
        api_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> None:
        """A new cluster (or, with `name`, the existing cluster of that id: see `from_name`)."""
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        worker = {"cores": cores, "memory": memory, "disk": disk, "image": image, "gpus": gpus}
        request: dict[str, Any] = {
            "backend": backend,
            "worker": _worker_request(worker),
            "workerGroups": [_worker_request(group) for group in worker_groups or []] or None,
            "idleTimeout": idle_timeout,
        }
        # Whatever is left out, the API fills in with the facility's defaults.
        self._request = {key: value for key, value in request.items() if value not in (None, {})}
        self._connect_only = name is not None
        # In a notebook of the facility: its edge's in-cluster name (set by the hub's spawner).
        self._edge_host = edge_host or os.environ.get("FACILITY_EDGE_HOST") or None
        self._api_url = (api_url or os.environ["FACILITY_OPERATOR_URL"]).rstrip("/")
        self._api_token = api_token or os.environ["JUPYTERHUB_API_TOKEN"]
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._view: dict[str, Any] = {}
        self.security: ClusterSecurity | None = None
        self._token_shared: int | None = None  # the shared token file's mtime
        self._token_task: asyncio.Future[None] | None = None
        if not self.called_from_running_loop:
            self._loop_runner.start()
            self.sync(self._start)

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> FacilityCluster:
        """Connect to one of the caller's existing clusters by its id; `close()` ends it."""
        return cls(name=name, **kwargs)

    def __await__(self) -> Any:
        async def start() -> FacilityCluster:
            if self.status == Status.created:
                await self._start()
            return self

        return start().__await__()

    # --- the user API

    async def _api(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        async with self._session.request(method, self._api_url + path, json=body) as response:
            if response.status == 204:
                return None
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = {"error": await response.text()}
            if response.status >= 400:
                raise FacilityError(response.status, answer.get("error", ""), answer.get("field"))
            return answer

    async def _until(self, what: str, poll: Any) -> Any:
        """poll() until it returns something, within the cluster's timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            found = await poll()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                state = self._view.get("message") or f"phase {self._view.get('phase')}"
                raise TimeoutError(f"cluster {self.name}: {what} after {self._timeout}s ({state})")
            await asyncio.sleep(POLL_SECONDS)

    async def _running(self) -> dict[str, Any] | None:
        self._view = await self._api("GET", f"/clusters/{self.name}")
        if self._view["phase"] == "Failed":
            raise FacilityError(500, f"cluster {self.name} failed: {self._view['message']}")
        return self._view if self._view["phase"] == "Running" else None

    async def _credentials(self) -> dict[str, str] | None:
        try:
            return await self._api("GET", f"/clusters/{self.name}/credentials")
        except FacilityError as error:
            if error.status == 409:  # the operator has not made them yet
                return None
            raise

    # --- distributed.deploy.Cluster

    async def _start(self) -> None:
        self.status = Status.starting
        self._session = aiohttp.ClientSession(
            # The system's resolver (getaddrinfo, as every other tool of the pod): aiohttp's
            # own default is c-ares where aiodns is installed, which timed out on the cluster's
            # DNS in the end-to-end test.
            connector=aiohttp.TCPConnector(resolver=aiohttp.ThreadedResolver()),
            headers={"Authorization": f"token {self._api_token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        )
        try:
            if not self._connect_only:
                self._view = await self._api("POST", "/clusters", self._request)
                self.name = self._view["id"]
            await self._until("not Running", self._running)
            credentials = await self._until("no credentials", self._credentials)
            public = urlsplit(credentials["address"])
            sni = public.hostname if self._edge_host else None
            address = edge_address(self._edge_host, public.port) if sni else credentials["address"]
            self.security = client_security(
                credentials["ca"], credentials["tls_cert"], credentials["tls_key"], sni
            )
            self.scheduler_comm = rpc(
                address, connection_args=self.security.get_connection_args("client")
            )
            await super()._start()
            await self._share_token()
            self._token_task = asyncio.ensure_future(self._keep_token_shared())
        except BaseException:
            await self._session.close()
            self.status = Status.failed
            raise

    async def _share_token(self) -> None:
        """PUT the bearer token file's content, if there is one and it changed since last time."""
        path = tokens.token_file()
        try:
            stamp = path.stat().st_mtime_ns
            if stamp == self._token_shared:
                return
            token = path.read_text().strip()
        except OSError:
            return  # no token here: the cluster's pods read without one
        if token:
            await self._api("PUT", f"/clusters/{self.name}/token", {"token": token})
        self._token_shared = stamp

    async def _keep_token_shared(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_CHECK_SECONDS)
            try:
                await self._share_token()
            except (FacilityError, aiohttp.ClientError) as error:
                log.warning("could not share the refreshed token with %s: %s", self.name, error)

    def share_token(self) -> Any:
        """Share the current bearer token with the cluster's pods now."""
        self._token_shared = None
        return self.sync(self._share_token)

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        if self._token_task is not None:
            self._token_task.cancel()
        await super()._close()
        if self._session is not None:
            try:
                await self._api("DELETE", f"/clusters/{self.name}")
            except FacilityError as error:
                if error.status != 404:  # already gone is what close wants
                    raise
            finally:
                await self._session.close()

    def _ask(self, minimum: int, maximum: int, group: str | None = None) -> Any:
        """PATCH the desired range: at once, or as a task when the cluster is asynchronous."""
        path = f"/clusters/{self.name}"
        body: dict[str, Any] = {"minWorkers": minimum, "maxWorkers": maximum}
        if group is not None:
            body["group"] = group
        if not self.asynchronous:
            self.sync(self._api, "PATCH", path, body)
            return None
        task = asyncio.ensure_future(self._api("PATCH", path, body))
        task.add_done_callback(_log_failure)
        return task

    def scale(self, n: int, group: str | None = None) -> Any:
        """Ask for exactly n workers, of the default group or of `group` (an awaitable when the
        cluster is asynchronous)."""
        return self._ask(n, n, group)

    def adapt(  # type: ignore[override]
        self, minimum: int = 0, maximum: int | None = None, group: str | None = None, **kwargs: Any
    ) -> ScaleRange:
        """Let the operator keep between minimum and maximum workers as the scheduler's load
        asks for (of the default group or of `group`)."""
        if maximum is None:
            raise ValueError("adapt needs a maximum: the facility's quota counts it")
        self._ask(minimum, maximum, group)
        return ScaleRange(minimum, maximum)

    def workers(self) -> Any:
        """The cluster's workers as the operator sees them: a list of {name, id, group, state,
        since, reason}; state is pending, starting, connected, or, for the recent failures,
        failed, held or evicted."""
        return self.sync(self._api, "GET", f"/clusters/{self.name}/workers")

    def logs(self, worker: str) -> Any:
        """The last lines of one worker's log (where its backend keeps one)."""

        async def text() -> str:
            found = await self._api("GET", f"/clusters/{self.name}/workers/{worker}/logs")
            return str(found["log"])

        return self.sync(text)

    @property
    def dashboard_link(self) -> str:
        """The dashboard through the hub's proxy, as the operator reports it."""
        return str(self._view.get("dashboardLink", ""))


def _worker_request(worker: dict[str, Any]) -> dict[str, Any]:
    """A worker (group) request without its unset fields, quantities as Kubernetes writes them."""
    return {
        key: quantity(value) if key in ("memory", "disk") else value
        for key, value in worker.items()
        if value is not None
    }


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the facility's API refused a scale request: %s", task.exception())
