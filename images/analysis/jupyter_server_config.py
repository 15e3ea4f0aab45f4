# The users' Jupyter servers (read from /etc/jupyter/), at each start of a server:
# - jupyter-server-proxy may proxy the facility's Dask dashboards (facility_client.dashboard), so
#   a cluster's dashboardLink opens;
# - the facility's examples (/opt/facility/examples, from the repository's examples/) are copied
#   into ~/examples, file by file where the home has none: a user's edits are never replaced,
#   and a new example arrives with a new image;
# - facility-token keeps the user's access token where WLCG tools look (XRootD reads through
#   XCache, FacilityCluster shares it with the cluster), fetched now and every few minutes.
import os
import shutil
import subprocess
from pathlib import Path

from facility_client.dashboard import allowed_host

c.ServerProxy.host_allowlist = allowed_host  # type: ignore[name-defined]  # noqa: F821

EXAMPLES = Path("/opt/facility/examples")
TOKEN_REFRESH_SECONDS = 240  # the hub renews tokens older than auth.refreshAge (300 s)


def copy_examples(home: Path) -> None:
    for source in EXAMPLES.rglob("*"):
        target = home / "examples" / source.relative_to(EXAMPLES)
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


copy_examples(Path.home())
if os.environ.get("FACILITY_TOKENS_URL") and os.environ.get("JUPYTERHUB_API_TOKEN"):
    subprocess.Popen(["facility-token", "--every", str(TOKEN_REFRESH_SECONDS)])
