"""Names of a user's clusters (operators/README.md, "Cluster id")."""

from __future__ import annotations

import re
import secrets
import string

SLUG_LENGTH = 40
RANDOM_LENGTH = 5
_ALPHABET = string.ascii_lowercase + string.digits


def user_slug(name: str) -> str:
    """The JupyterHub name lower-cased, every other character `-`, cut to 40, without `-` at
    either end (a label value and the start of a DNS label must begin and end alphanumeric)."""
    slug = re.sub(r"[^a-z0-9]", "-", name.lower())[:SLUG_LENGTH].strip("-")
    return slug or "user"


def new_cluster_id(name: str) -> str:
    """`<user-slug>-<5 random [a-z0-9]>`: a DNS label, at most 46 characters."""
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{user_slug(name)}-{suffix}"
