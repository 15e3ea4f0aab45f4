"""Linux namespaces of their own, held open by one process, as a pod's sandbox is: the XCache
sandboxes (network and mounts) and the test browser's network."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from harness import HarnessError


class NamespaceHolder:
    """`unshare` into new namespaces of `kinds` ("net", "mount"), run the shell `setup` steps
    there, then wait on stdin: the namespaces live until close(). Not named under /run/netns:
    `ip netns add` would bind-mount /run/netns over itself, and the pods' namespaces that
    containerd mounts there could then no longer be removed."""

    def __init__(self, kinds: Sequence[str], setup: Sequence[str] = ()) -> None:
        unshare = ["unshare", *(f"--{kind}" for kind in kinds)]
        if "mount" in kinds:
            unshare += ["--propagation", "private"]  # nothing mounted inside leaks out
        steps = ["set -e", *setup, "echo ready", "exec cat >/dev/null"]
        self.process = subprocess.Popen(
            [*unshare, "--", "sh", "-c", "\n".join(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            _, err = self.process.communicate(timeout=10)
            raise HarnessError(f"{' '.join(unshare)} did not start (root is needed): {err}")
        self.kinds = tuple(kinds)

    @property
    def pid(self) -> int:
        return self.process.pid

    def enter(self) -> list[str]:
        """The command prefix (nsenter) that runs a program inside the held namespaces."""
        return ["nsenter", f"--target={self.pid}", *(f"--{kind}" for kind in self.kinds)]

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the holder's `cat` ends, and the namespaces with it
            self.process.wait(timeout=30)
