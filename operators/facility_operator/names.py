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
    """`<user-slug>-<5 random [a-z0-9]>`, with a `u` in front of a slug that does not begin
    with a letter: a DNS-1035 label (the Service `<id>-scheduler` must begin with a letter, so
    a user `1alice` gets `u1alice-x7k2p`), at most 47 characters. Two names that slug alike
    (`a.b`, `a-b`) differ in the random part; the owner is the spec's exact name."""
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_LENGTH))
    slug = user_slug(name)
    return f"{slug if slug[0].isalpha() else 'u' + slug}-{suffix}"
