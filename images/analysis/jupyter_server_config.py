# The users' Jupyter servers (read from /etc/jupyter/): jupyter-server-proxy may proxy the
# facility's Dask dashboards (facility_client.dashboard), so a cluster's dashboardLink opens.
from facility_client.dashboard import allowed_host

c.ServerProxy.host_allowlist = allowed_host  # type: ignore[name-defined]  # noqa: F821
