"""HTCondor: workers are HTCondor jobs (dask-jobqueue's HTCondorCluster).

Config (the chart's `backends.htcondor` values, as FACILITY_BACKEND_CONFIG):

- `universe`: `docker` (the worker image as `docker_image`) or `vanilla` (the image run by
  apptainer through `+SingularityImage`; `apptainer_image` overrides the image reference,
  e.g. an unpacked image on CVMFS). Default `docker`.
- `schedd`, `collector`: where to submit (`condor_submit -name/-pool`) and where the operator
  queries; the local configuration's defaults when absent.
- `token_file`: the user's token, mounted in the scheduler pod. The submit authenticates with
  it by HTCondor's SCITOKENS method (configuration `SCITOKENS_FILE`, set for the HTCondor tools
  as `_CONDOR_SCITOKENS_FILE`), and the job gets a copy by file transfer, found by the WLCG
  bearer-token discovery (`BEARER_TOKEN_FILE`), e.g. to read through XCache.
- `edge_host`; `interface` (the network interface whose address a worker listens on and
  advertises; the scheduler pod must be able to reach it); `death_timeout`; `python`;
  `walltime` (seconds, as `+MaxRuntime`); `extra_directives` (more submit commands).

The TLS files go with each job by file transfer (`transfer_input_files`) and the worker reads
them from its sandbox. Every job carries `+FacilityCluster = "<namespace>/<cluster-id>"`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dask_jobqueue import HTCondorCluster
from dask_jobqueue.htcondor import HTCondorJob, quote_environment
from distributed.deploy import SpecCluster

from facility_client.backends.base import (
    WORKER_TLS_FILES,
    Backend,
    ClusterSpec,
    FacilityJobMixin,
    WorkerConnection,
)
from facility_client.security import ClusterSecurity

ATTRIBUTE = "FacilityCluster"
# The name of the token in the job's sandbox.
JOB_TOKEN = "bearer_token"


class FacilityHTCondorJob(FacilityJobMixin, HTCondorJob):
    """An HTCondor job of a facility cluster."""


class HTCondorBackend(Backend):
    name = "htcondor"

    @property
    def universe(self) -> str:
        universe = str(self.config.get("universe", "docker"))
        if universe not in ("docker", "vanilla"):
            raise ValueError(f"htcondor universe must be docker or vanilla, not {universe!r}")
        return universe

    def _tool_arguments(self) -> list[str]:
        args = []
        if self.config.get("schedd"):
            args += ["-name", str(self.config["schedd"])]
        if self.config.get("collector"):
            args += ["-pool", str(self.config["collector"])]
        return args

    def submit_directives(self, spec: ClusterSpec) -> dict[str, str]:
        """Submit commands beyond dask-jobqueue's own (which set the requests and the command)."""
        directives: dict[str, str] = {"universe": self.universe}
        if self.universe == "docker":
            directives["docker_image"] = spec.image
        else:
            image = self.config.get("apptainer_image") or f"docker://{spec.image}"
            directives["+SingularityImage"] = f'"{image}"'
        inputs = [str(spec.tls_dir / name) for name in WORKER_TLS_FILES]
        environment = spec.job_environment()
        token = self.config.get("token_file")
        if token:
            # File transfer keeps the base name; a relative path is found from the job's
            # sandbox, the worker's working directory.
            inputs.append(str(token))
            environment["BEARER_TOKEN_FILE"] = Path(str(token)).name
        directives["+" + ATTRIBUTE] = f'"{spec.key}"'
        directives["should_transfer_files"] = "YES"
        directives["when_to_transfer_output"] = "ON_EXIT_OR_EVICT"
        directives["transfer_input_files"] = ", ".join(inputs)
        if environment:
            directives["environment"] = f'"{quote_environment(environment)}"'
        if self.config.get("walltime"):
            directives["+MaxRuntime"] = str(int(self.config["walltime"]))
        extra = self.config.get("extra_directives", {})
        directives.update({str(name): str(value) for name, value in extra.items()})
        return directives

    def make_cluster(
        self,
        spec: ClusterSpec,
        security: ClusterSecurity,
        scheduler_options: Mapping[str, Any],
    ) -> SpecCluster:
        token = self.config.get("token_file")
        if token:
            # The scheduler pod serves one user: every condor_submit and condor_rm that
            # dask-jobqueue starts from it authenticates with that user's token.
            os.environ["_CONDOR_SCITOKENS_FILE"] = str(token)
        connection = WorkerConnection.for_spec(spec, self.config, ".")
        return HTCondorCluster(
            job_cls=FacilityHTCondorJob,
            **self.jobqueue_options(spec, security, scheduler_options, connection),
            disk=spec.disk_bytes,
            job_extra_directives=self.submit_directives(spec),
            submit_command_extra=self._tool_arguments(),
            cancel_command_extra=self._tool_arguments(),
        )

    # --- the operator side: the schedd through HTCondor's Python bindings

    def _schedd(self) -> Any:
        import htcondor2

        if not self.config.get("schedd"):
            return htcondor2.Schedd()
        collector = htcondor2.Collector(self.config.get("collector"))
        ad = collector.locate(htcondor2.DaemonType.Schedd, str(self.config["schedd"]))
        return htcondor2.Schedd(ad)

    @staticmethod
    def _constraint(cluster_key: str) -> str:
        import classad2

        return f"{ATTRIBUTE} == {classad2.quote(cluster_key)}"

    def list_jobs(self, cluster_key: str) -> list[str]:
        ads = self._schedd().query(
            constraint=self._constraint(cluster_key), projection=["ClusterId", "ProcId"]
        )
        return [f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads]

    def remove_jobs(self, cluster_key: str) -> int:
        import htcondor2

        found = self.list_jobs(cluster_key)
        if found:
            self._schedd().act(htcondor2.JobAction.Remove, self._constraint(cluster_key))
        return len(found)

    def list_all(self, namespace: str) -> dict[str, list[str]]:
        ads = self._schedd().query(
            constraint=f'regexp("^{namespace}/", {ATTRIBUTE})',
            projection=["ClusterId", "ProcId", ATTRIBUTE],
        )
        jobs: dict[str, list[str]] = {}
        for ad in ads:
            jobs.setdefault(str(ad[ATTRIBUTE]), []).append(f"{ad['ClusterId']}.{ad['ProcId']}")
        return jobs
