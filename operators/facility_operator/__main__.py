"""`python -m facility_operator`: the operator, for the release's namespace only.

Environment: FACILITY_VALUES_DIR, FACILITY_FULLNAME, FACILITY_NAMESPACE (see settings.py), and
FACILITY_LIVENESS_URL, where kopf answers the liveness probe (the chart's operator.healthPort).
"""

from __future__ import annotations

import os

import kopf

from facility_operator import (
    handlers,  # noqa: F401  (registers the handlers with kopf)
    logs,
)
from facility_operator.settings import Settings


def main() -> None:
    logs.configure()
    settings = Settings.from_env()
    kopf.run(
        # One replica, one namespace: no peering objects, no cluster-wide permissions.
        standalone=True,
        namespaces=[settings.namespace],
        liveness_endpoint=os.environ["FACILITY_LIVENESS_URL"],
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
