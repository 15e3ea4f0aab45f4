"""One timed pass of the benchmark: uproot reads every branch of the Events tree of each file,
as an analysis that needs them all would. Run as a process of its own (a fresh XRootD client),
so that its start-up is not timed.

usage: python reader.py [--xrootd] URL_OR_PATH...

--xrootd: uproot on the XRootD bindings (uproot.source.xrootd.XRootDSource) instead of its
default handler (fsspec, with fsspec-xrootd for root://).

Prints one JSON object: {"seconds", "events"}.
"""

from __future__ import annotations

import json
import sys
import time

import uproot


def main(args: list[str]) -> None:
    options = {}
    if args and args[0] == "--xrootd":
        options["handler"] = uproot.source.xrootd.XRootDSource
        args = args[1:]
    events = 0
    start = time.perf_counter()
    for source in args:
        with uproot.open(source, timeout=300, **options) as file:
            arrays = file["Events"].arrays(library="ak")
            events += len(arrays)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "events": events}))


if __name__ == "__main__":
    main(sys.argv[1:])
