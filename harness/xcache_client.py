"""A reader of root:// files, run by the XCache tests as a process of its own, as a notebook or a
Dask worker would read: one process per reader, so that the XRootD client's connections and
its token are its own.

usage: python -m harness.xcache_client HOW URL [URL...]

HOW: "uproot" (uproot's default handler, fsspec-xrootd underneath), "uproot-xrootd" (uproot on
the XRootD bindings directly) or "fsspec" (the files' bytes through fsspec-xrootd). Prints one
JSON line per URL: {"url", "entries", "sha256"} for uproot, {"url", "sha256", "size"} for
fsspec, or {"url", "error"}; exits 1 if any read failed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

HOWS = ("uproot", "uproot-xrootd", "fsspec")


def read(how: str, url: str) -> dict[str, Any]:
    if how == "fsspec":
        import fsspec

        with fsspec.open(url, "rb") as handle:
            data = handle.read()
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    import uproot

    from harness.xcache_data import TREE, arrays_digest

    options = {"handler": uproot.source.xrootd.XRootDSource} if how == "uproot-xrootd" else {}
    with uproot.open(url, timeout=60, **options) as file:
        return arrays_digest(file[TREE])


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in HOWS:
        print(__doc__, file=sys.stderr)
        return 2
    how, urls = argv[0], argv[1:]
    failed = False
    for url in urls:
        try:
            result = {"url": url, **read(how, url)}
        except Exception as error:
            failed = True
            result = {"url": url, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
