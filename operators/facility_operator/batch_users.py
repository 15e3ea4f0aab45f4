"""Which batch user a cluster's owner is: the account their SLURM or HTCondor jobs run as.

The chart's `operator.batchUsers` says it once for every batch backend:

- `rule: name` (the default): the JupyterHub name is the batch user's name, as at a site whose
  hub and batch system share one directory (LDAP, or CILogon names made Unix names);
- `rule: table`: the `table` maps JupyterHub names to batch users; a user missing from it gets
  no batch workers, and the cluster's status says why.

Each backend receives the values as `batch_users` in its config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RULES = ("name", "table")


class NoBatchUser(LookupError):
    """The owner has no batch user: the message names the value to set."""


def batch_user(owner: str, config: Mapping[str, Any]) -> str:
    """The batch user of the JupyterHub user `owner`, by the rule in config["batch_users"]."""
    rules = dict(config.get("batch_users") or {})
    rule = rules.get("rule", "name")
    if rule == "name":
        return owner
    if rule == "table":
        user = (rules.get("table") or {}).get(owner)
        if not user:
            raise NoBatchUser(f"{owner!r} has no batch user: add them to operator.batchUsers.table")
        return str(user)
    raise NoBatchUser(f"operator.batchUsers.rule is {rule!r}: one of {', '.join(RULES)}")
