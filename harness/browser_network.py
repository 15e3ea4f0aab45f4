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

from harness import HarnessError
from harness.namespaces import NamespaceHolder

NODE_LINK, BROWSER_LINK = "fbrowser-node", "fbrowser-ns"
# TEST-NET-2 (RFC 5737): never a cluster's pod or Service range, nor a real network.
NODE_ADDRESS, BROWSER_ADDRESS = "198.51.100.1/30", "198.51.100.2/30"


def _run(*argv: str, check: bool = True) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


@contextmanager
def browser_network() -> Iterator[list[str]]:
    """Yields the command prefix that runs a program in the browser's namespace, and removes
    the namespace at the end."""
    _run("ip", "link", "delete", NODE_LINK, check=False)  # a link a killed run left
    holder = NamespaceHolder(["net"])
    try:
        inside = [*holder.enter(), "--"]
        # No IPv6 inside: its link-local address would appear a moment after the link is up
        # (duplicate address detection), a network change Chromium would act on.
        ipv6_off = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        _run(*inside, "sysctl", "-qw", *ipv6_off)
        _run("ip", "link", "add", NODE_LINK, "type", "veth", "peer", "name", BROWSER_LINK)
        _run("ip", "link", "set", BROWSER_LINK, "netns", str(holder.pid))
        _run(*inside, "sysctl", "-qw", f"net.ipv6.conf.{BROWSER_LINK}.disable_ipv6=1")
        _run("ip", "addr", "add", NODE_ADDRESS, "dev", NODE_LINK)
        _run("ip", "link", "set", NODE_LINK, "up")
        _run(*inside, "ip", "addr", "add", BROWSER_ADDRESS, "dev", BROWSER_LINK)
        _run(*inside, "ip", "link", "set", BROWSER_LINK, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "route", "add", "default", "via", NODE_ADDRESS.split("/")[0])
        yield inside
    finally:
        holder.close()  # the namespace ends, and the link's other end with it
        _run("ip", "link", "delete", NODE_LINK, check=False)
