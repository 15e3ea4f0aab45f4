"""A network namespace of its own for the test browser, joined to the node by one veth pair.

Chromium fails every request in flight with net::ERR_NETWORK_CHANGED when the machine's network
interfaces change, and the local cluster adds an interface for every pod it starts: a browser
on the node saw the Dask panel's "+ NEW" request die while the new cluster's scheduler pod came
up, and the panel then waited forever. Inside its own namespace the browser sees one link that
never changes, and reaches the node's addresses (the edge's node port, the OpenID provider)
through it, as a laptop on the site's network would.

    with browser_network() as prefix:      # root only
        subprocess.run([*prefix, "node", "browser-login.mjs", ...])
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

NAMESPACE = "facility-browser"
NODE_LINK, BROWSER_LINK = "fbrowser-node", "fbrowser-ns"
# TEST-NET-2 (RFC 5737): never a cluster's pod or Service range, nor a real network.
NODE_ADDRESS, BROWSER_ADDRESS = "198.51.100.1/30", "198.51.100.2/30"


def _ip(*args: str, namespace: bool = False, check: bool = True) -> None:
    argv = ["ip", *(["netns", "exec", NAMESPACE, "ip"] if namespace else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


def remove() -> None:
    """The namespace and its link, if a run left them (deleting one end removes the pair)."""
    _ip("link", "delete", NODE_LINK, check=False)
    _ip("netns", "delete", NAMESPACE, check=False)


@contextmanager
def browser_network() -> Iterator[list[str]]:
    """Makes the namespace (anew), yields the command prefix that runs a program in it, and
    removes it at the end."""
    remove()
    _ip("netns", "add", NAMESPACE)
    try:
        _ip("link", "add", NODE_LINK, "type", "veth", "peer", "name", BROWSER_LINK)
        _ip("link", "set", BROWSER_LINK, "netns", NAMESPACE)
        _ip("addr", "add", NODE_ADDRESS, "dev", NODE_LINK)
        _ip("link", "set", NODE_LINK, "up")
        _ip("addr", "add", BROWSER_ADDRESS, "dev", BROWSER_LINK, namespace=True)
        _ip("link", "set", BROWSER_LINK, "up", namespace=True)
        _ip("link", "set", "lo", "up", namespace=True)
        _ip("route", "add", "default", "via", NODE_ADDRESS.split("/")[0], namespace=True)
        yield ["ip", "netns", "exec", NAMESPACE]
    finally:
        remove()
