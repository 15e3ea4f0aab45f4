"""`python -m facility_client.worker`: `dask worker`, trusting its cluster's CA alone.

Every batch job and worker pod runs this instead of `python -m distributed.cli.dask_worker`,
with the same arguments and `--tls-ca-file` naming the cluster CA (`cluster-ca.crt`). A worker
listens too (the scheduler and other workers dial it), so it must refuse the leaf of any other
cluster exactly as the scheduler does: a plain `distributed.Security` would need the facility CA
as its anchor (OpenSSL wants a self-signed root unless told otherwise), and then every user's
leaf would pass. `ClusterSecurity` sets OpenSSL's partial-chain flag, which makes the cluster CA
an anchor of its own (facility_client.security). It also keeps a private copy of the user's
token for XRootD (facility_client.tokens.PrivateCopy).
"""

from __future__ import annotations

import distributed.nanny
import distributed.worker
from distributed.cli import dask_worker

from facility_client.security import ClusterSecurity
from facility_client.tokens import PrivateCopy


def main() -> None:
    # The user's token, where XRootD accepts it (tokens.PrivateCopy), for reads through XCache.
    copy = PrivateCopy.from_env()
    if copy is not None:
        copy.start()
    # `dask worker` hands its --tls-* options to the Worker and the Nanny as a dict, which each
    # turns into its module's `Security`: point that name at ClusterSecurity.
    distributed.worker.Security = ClusterSecurity  # type: ignore[misc]
    distributed.nanny.Security = ClusterSecurity  # type: ignore[misc]
    dask_worker.main()


if __name__ == "__main__":
    main()
