"""The operator's log: one line per meaningful event, none per poll, probe or watch event.

Left alone, three things would write a line every few seconds while nothing happens:

- aiohttp's access log (logger `aiohttp.access`, INFO) of every server in the process: the
  edge's poll of GET /routes every second, the kubelet's probes of kopf's /healthz, Prometheus'
  scrapes of /metrics. `QuietPolls` moves the successful ones to DEBUG; every other request keeps
  its one access line, and a failed poll or probe still shows.
- kopf's "Handler '<id>' succeeded." and "Creation is processed: 1 succeeded; 0 failed."
  (logger `kopf.objects`, INFO) after every run of a handler: the edge's route handler runs for
  every watch event of every DaskCluster, and each status patch is one. `QuietHandlers` moves
  kopf's success lines to DEBUG: each handler logs what it did itself, naming its cluster.
  kopf's other lines (failures, retries) stay, and `ObjectFormatter` names their object.
- the same failure in every loop of a daemon (a batch system that does not answer): `Trouble`
  says it once, then again only when it changes, and says when it is over.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

ACCESS_LOGGER = "aiohttp.access"
KOPF_OBJECTS_LOGGER = "kopf.objects"
# Asked by machines, all the time: Traefik's HTTP provider (edge_routes.PATH), the kubelet's
# probes of kopf's health endpoint (the chart's FACILITY_LIVENESS_URL), Prometheus.
QUIET_PATHS = frozenset({"/routes", "/healthz", "/metrics"})
# kopf's own words (kopf._core.actions.execution and reactor.processing) for a success.
KOPF_SUCCESS = re.compile(
    r"Handler '[^']+' succeeded\.|[A-Z]\w+ is processed: \d+ succeeded; 0 failed\."
)
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _demote(record: logging.LogRecord) -> bool:
    """Make the record a DEBUG one; keep it only where its logger shows DEBUG."""
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def request_path(record: logging.LogRecord) -> str:
    """The path of an aiohttp access record, from the request line aiohttp passes as `extra`
    (its `%r`, in the default format: 'GET /routes?x=1 HTTP/1.1'); "" if it has none."""
    parts = str(getattr(record, "first_request_line", "")).split()
    return urlsplit(parts[1]).path if len(parts) == 3 else ""


class QuietPolls(logging.Filter):
    """On `aiohttp.access`: successful requests of QUIET_PATHS at DEBUG, the rest as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = str(getattr(record, "response_status", ""))
        if request_path(record) in QUIET_PATHS and status[:1] in ("2", "3"):
            return _demote(record)
        return True


class QuietHandlers(logging.Filter):
    """On `kopf.objects`: kopf's lines of a handler's success at DEBUG, the rest as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and KOPF_SUCCESS.fullmatch(record.getMessage()):
            return _demote(record)
        return True


class ObjectFormatter(logging.Formatter):
    """Lines about one Kubernetes object (kopf's, which pass it as `extra` k8s_ref) begin with
    "[namespace/name]": kopf's own messages do not name it."""

    def format(self, record: logging.LogRecord) -> str:
        ref = getattr(record, "k8s_ref", None)
        if not isinstance(ref, dict) or not ref.get("name"):
            return super().format(record)
        name = "/".join(str(part) for part in (ref.get("namespace"), ref["name"]) if part)
        kept = record.msg, record.args
        record.msg, record.args = f"[{name}] {record.getMessage()}", None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = kept


def configure() -> None:
    """The operator's logging: INFO in one format on standard error, the quiet filters on."""
    handler = logging.StreamHandler()
    handler.setFormatter(ObjectFormatter(FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger(ACCESS_LOGGER).addFilter(QuietPolls())
    logging.getLogger(KOPF_OBJECTS_LOGGER).addFilter(QuietHandlers())


class Trouble:
    """One failure that a loop meets again at every turn, logged when it starts or changes (with
    its traceback) and when it is over, never twice alike in a row."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.last: str | None = None

    def failed(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        if text != self.last:
            self.logger.error("%s failed: %s", self.what, text, exc_info=error)
        self.last = text

    def ok(self) -> None:
        if self.last is not None:
            self.logger.info("%s works again", self.what)
        self.last = None
