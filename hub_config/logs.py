"""The hub's access log without the machines' routine.

JupyterHub logs every request at INFO but its health probe and static files. Two kinds come on
a clock rather than from a person: each user's server reports its activity every five minutes
(POST /hub/api/users/<name>/activity, JUPYTERHUB_ACTIVITY_INTERVAL), and Prometheus scrapes
/hub/metrics. Their successful requests go to DEBUG; every other request keeps its line, and a
refused or failed one still shows.
"""

from __future__ import annotations

import logging
import re

from tornado.log import access_log

# JupyterHub's access line (jupyterhub.log.log_request): "<status> <method> <uri> (<user>@<ip>)
# <time>ms", formatted before it is logged.
LINE = re.compile(r"(?P<status>\d{3}) (?P<method>[A-Z]+) (?P<path>[^?\s]+)")
ROUTINE = (
    ("POST", re.compile(r"(/.*)?/hub/api/users/[^/]+/activity")),
    ("GET", re.compile(r"(/.*)?/hub/metrics")),
)


def routine(message: str) -> bool:
    """Whether an access line is a successful request of the ROUTINE kinds."""
    found = LINE.match(message)
    return bool(
        found
        and found["status"].startswith("2")
        and any(
            found["method"] == method and path.fullmatch(found["path"]) for method, path in ROUTINE
        )
    )


class QuietRoutine(logging.Filter):
    """On tornado's access logger: the ROUTINE requests at DEBUG, the rest as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not routine(record.getMessage()):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # JupyterHub renames tornado's loggers after its own: its level is the hub's.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_routine() -> None:
    """Install the filter (once: the configuration may be loaded again)."""
    if not any(isinstance(f, QuietRoutine) for f in access_log.filters):
        access_log.addFilter(QuietRoutine())
