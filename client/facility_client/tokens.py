"""Keep the user's access token in a file, where XRootD, HTCondor and other WLCG tools look.

The hub holds the identity provider's tokens and refreshes them; its token service hands a
user's server the current access token (hub_config.token_service). This module fetches it with
the server's JupyterHub token and writes it, readable by the user alone (mode 0600), to the
file of the WLCG bearer-token discovery rules: $BEARER_TOKEN_FILE, else
$XDG_RUNTIME_DIR/bt_u<uid>, else /tmp/bt_u<uid>.

usage: facility-token [--once | --every SECONDS] [--url URL] [--file PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def token_file() -> Path:
    """Where WLCG tools look for a bearer token, by the discovery rules' order."""
    if os.environ.get("BEARER_TOKEN_FILE"):
        return Path(os.environ["BEARER_TOKEN_FILE"])
    name = f"bt_u{os.getuid()}"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / name if runtime else Path("/tmp") / name


def fetch(url: str, api_token: str, timeout: float = 10) -> str:
    """The user's current access token from the hub's token service."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {api_token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(json.load(response)["access_token"])
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise SystemExit(f"the token service at {url} said {error.code}: {detail}") from error


def write(path: Path, token: str) -> None:
    """Replace the file at once (readers never see half a token), mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:  # mkstemp makes the file with mode 0600
            out.write(token)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# How often a cluster's pod copies the mounted token again (the kubelet updates a Secret's volume
# within about a minute of a change).
COPY_SECONDS = 30.0


class PrivateCopy:
    """The user's token, as a cluster's pods get it (a Secret's volume: files of mode 0440 that
    root owns), copied to a file that this process' user owns with mode 0600: XRootD's ztn
    refuses a token file that others may read. `start()` points $BEARER_TOKEN_FILE at the copy
    (for this process and the ones it starts, e.g. the Nanny's worker) and keeps it current."""

    def __init__(self, mounted: Path, private: Path) -> None:
        self.mounted, self.private = mounted, private

    @classmethod
    def from_env(cls) -> PrivateCopy | None:
        mounted = os.environ.get("BEARER_TOKEN_FILE")
        if not mounted:
            return None
        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return cls(Path(mounted), Path(runtime) / f"bt_u{os.getuid()}")

    def refresh(self) -> bool:
        """Copy the token if it changed; whether there is one (the Secret may come later)."""
        try:
            token = self.mounted.read_text()
        except OSError:
            return False
        try:
            if self.private.read_text() == token:
                return True
        except OSError:
            pass
        write(self.private, token)
        return True

    def start(self) -> None:
        self.refresh()
        os.environ["BEARER_TOKEN_FILE"] = str(self.private)

        def keep() -> None:
            while True:
                time.sleep(COPY_SECONDS)  # a refresh period, not synchronisation
                self.refresh()

        threading.Thread(target=keep, name="token-copy", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("FACILITY_TOKENS_URL"),
                        help="the token service (default: $FACILITY_TOKENS_URL)")  # fmt: skip
    parser.add_argument("--file", type=Path, default=None, help="default: WLCG discovery")
    parser.add_argument("--every", type=float, default=0, help="repeat every SECONDS")
    parser.add_argument("--once", action="store_true", help="fetch once and exit (default)")
    args = parser.parse_args(argv)
    api_token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not args.url or not api_token:
        parser.error("needs --url (or FACILITY_TOKENS_URL) and JUPYTERHUB_API_TOKEN")
    path = args.file or token_file()
    while True:
        try:
            write(path, fetch(args.url, api_token))
        except (SystemExit, OSError) as error:
            if args.once or not args.every:
                raise
            # Kept running: the hub may be restarting; the token in the file is still valid.
            print(f"facility-token: {error}; again in {args.every:.0f}s", file=sys.stderr)
        if args.once or not args.every:
            print(f"access token written to {path}")
            return 0
        time.sleep(args.every)  # a refresh period, not synchronisation


if __name__ == "__main__":
    sys.exit(main())
