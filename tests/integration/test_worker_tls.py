"""A worker (`python -m facility_client.worker`, as every backend runs it) accepts the leaf of its
own cluster and refuses the leaf of another cluster, although the same facility CA signed both:
on its Worker's and its Nanny's listeners. A real scheduler and a real worker process, on
loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Scheduler
from distributed.comm import connect
from facility_client.security import client_security, scheduler_security
from facility_operator.certs import ClusterIdentity, KeyPair, new_cluster_identity, new_facility_ca


def write(identity: ClusterIdentity, directory: Path) -> Path:
    directory.mkdir()
    for name, pem in identity.secret_data().items():
        (directory / name).write_text(pem)
    return directory


def test_worker_refuses_another_clusters_leaf(tmp_path: Path) -> None:
    facility: KeyPair = new_facility_ca("test")
    mine = new_cluster_identity(facility, "alice-aaaaa", "alice-aaaaa.dask.test")
    other = new_cluster_identity(facility, "bob-bbbbb", "bob-bbbbb.dask.test")
    tls = write(mine, tmp_path / "mine")
    own = client_security(mine.facility_ca, mine.tls_cert, mine.tls_key).get_connection_args(
        "client"
    )
    foreign = client_security(other.facility_ca, other.tls_cert, other.tls_key).get_connection_args(
        "client"
    )

    async def scenario() -> None:
        async with Scheduler(
            security=scheduler_security(tls), host="127.0.0.1", port=0, dashboard=False
        ) as scheduler:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "facility_client.worker",
                    scheduler.address,
                    "--host",
                    "127.0.0.1",
                    "--tls-ca-file",
                    str(tls / "cluster-ca.crt"),
                    "--tls-cert",
                    str(tls / "tls.crt"),
                    "--tls-key",
                    str(tls / "tls.key"),
                ],
            )
            try:
                deadline = time.monotonic() + 60
                while not scheduler.workers:
                    assert time.monotonic() < deadline, "the worker did not register"
                    assert worker.poll() is None, "the worker exited"
                    await asyncio.sleep(0.2)
                (state,) = scheduler.workers.values()
                for address in (state.address, state.nanny):
                    comm = await connect(address, timeout=10, **own)
                    await comm.close()
                    with pytest.raises(OSError, match=r"SSL\w*Error|reset by peer"):
                        await connect(address, timeout=3, **foreign)
            finally:
                worker.terminate()
                worker.wait(timeout=30)

    asyncio.run(scenario())
