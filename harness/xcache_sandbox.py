"""XCache as the chart runs it, on this machine, for the integration tests and the benchmark.

- `render` gives the chart's xcache objects for a set of values (helm template).
- `Sandbox` is a pod's worth of isolation: a network namespace of its own (only loopback, so
  the chart's own ports, 1094 and the rest, are free and nothing else is reached) and a mount
  namespace in which the pod's volumes and files are mounted (a tmpfs as the cache volume,
  /etc/hosts with the pod's hostAliases, a CA bundle over the system one). Every process of a
  test runs inside it through nsenter, as a container's would.
- `CachePod` runs the cache container of the rendered StatefulSet: its command
  (images/xcache/xcache-entrypoint), its environment, the rendered ConfigMap as its
  configuration folder, and its readiness probe (images/xcache/xcache-probe) to know when it is
  ready, as the kubelet would. Nothing of the rendered text is edited.
- `Origin` is a plain xrootd server with the test's files, whose log tells what it sent.
- `TokenIssuer` makes the SciTokens / WLCG tokens of the token tests (harness.pki the
  certificates).

xrootd refuses to run as root; as root, the servers run as the user of Debian's xrootd package.
Namespaces need root: the helpers fail, naming why, when the tests do not run as root.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from harness import HarnessError
from harness.commands import helm
from harness.namespaces import NamespaceHolder
from harness.paths import CHART, ROOT
from harness.pki import Pki
from harness.wait import wait_for

IMAGE = ROOT / "images" / "xcache"
RELEASE, NAMESPACE = "af", "facility"
# The address notebooks get (hub_config.spawner) and the cache's TLS certificate names.
SERVICE = f"{RELEASE}-facility-xcache.{NAMESPACE}"
ORIGIN_PORT = 2094
ISSUER_PORT = 8443
WLCG_ANY = "https://wlcg.cern.ch/jwt/v1/any"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_root() -> None:
    if os.geteuid() != 0:
        raise HarnessError(
            "the XCache tests need root: they run xrootd in network and mount namespaces of "
            "their own (unshare, nsenter), as a pod would run"
        )


def server_user() -> pwd.struct_passwd:
    """Who the xrootd servers run as: this user, or, for root, Debian's xrootd user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    try:
        return pwd.getpwnam("xrootd")
    except KeyError:
        raise HarnessError(
            "no user 'xrootd': install Debian's xrootd-server (ci/prereqs)"
        ) from None


def workdir(prefix: str) -> Path:
    """A fresh folder under /tmp that the server user can reach (pytest's own are root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def own(path: Path) -> Path:
    """Make path (a folder, made if needed) the server user's."""
    path.mkdir(parents=True, exist_ok=True)
    user = server_user()
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def xcache_values(base: Path, **xcache: Any) -> dict[str, Any]:
    """Chart values that run the cache in a sandbox: its folders under base, the origin of this
    module, and short timeouts; xcache overrides or adds keys of the xcache section."""
    values: dict[str, Any] = {
        "enabled": True,
        "origin": {
            "host": "127.0.0.1",
            "port": ORIGIN_PORT,
            "connectTimeout": 1,
            "connectRetries": 1,
            "requestTimeout": 20,
        },
        "cache": {"blockSize": "512k", "prefetch": 4, "purgeInterval": 3600},
        "paths": {name: str(base / name) for name in ("config", "data", "run", "tls")},
        "logLevel": "info",
    }
    for key, value in xcache.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return {"xcache": values}


def render(values: Mapping[str, Any], folder: Path) -> dict[str, dict[str, Any]]:
    """The chart's xcache ConfigMap and StatefulSet for these values, by kind."""
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    shown = [f"--show-only=templates/xcache/{name}.yaml" for name in ("configmap", "statefulset")]
    manifest = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(path), *shown)
    return {doc["kind"]: doc for doc in yaml.safe_load_all(manifest.stdout) if doc}


class Sandbox:
    """A network and mount namespace held open by one process, like a pod's sandbox.

    tmpfs: {path: size} mounted inside (owned by the server user), e.g. the cache volume.
    binds: {path: file} bind-mounted over path inside, e.g. /etc/hosts.
    writable: with these folders (and the mounts above) the only ones written to, the rest of
    the file system is read-only inside, as with readOnlyRootFilesystem.
    """

    def __init__(
        self,
        tmpfs: Mapping[str, str] | None = None,
        binds: Mapping[str, Path] | None = None,
        writable: Sequence[Path] | None = None,
    ) -> None:
        require_root()
        user = server_user()
        steps = ["ip link set lo up"]
        for folder in writable or ():  # first: a bind mount does not carry later submounts
            steps.append(f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))}")
        for path, size in (tmpfs or {}).items():
            Path(path).mkdir(parents=True, exist_ok=True)
            options = f"size={size},uid={user.pw_uid},gid={user.pw_gid},mode=0755"
            steps.append(f"mount -t tmpfs -o {options} xcache-volume {shlex.quote(path)}")
        for target, source in (binds or {}).items():
            steps.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        if writable is not None:
            steps.append("mount -o remount,bind,ro /")
        self.holder = NamespaceHolder(["net", "mount"], steps)
        self.processes: list[subprocess.Popen[str]] = []

    def command(self, argv: Sequence[str], *, as_server: bool = False) -> list[str]:
        enter = [*self.holder.enter(), f"--wd={ROOT}"]
        if as_server and os.geteuid() == 0:
            user = server_user()
            enter += [
                "--",
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
            ]
        return [*enter, "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        as_server: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv, as_server=as_server),
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], log: IO[str] | int, *, as_server: bool
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            self.command(argv, as_server=as_server),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def path(self, path: str | Path) -> Path:
        """A path as the sandbox sees it (its own mounts), from outside."""
        return Path(f"/proc/{self.holder.pid}/root") / str(path).lstrip("/")

    def close(self) -> None:
        for process in self.processes:
            stop(process)
        self.holder.close()


def stop(process: subprocess.Popen[str], timeout: float = 20) -> None:
    """End a server: SIGTERM, and SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def server_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """A container's environment: the image's PATH (with images/xcache first) and extra."""
    return {"PATH": f"{IMAGE}:{SYSTEM_PATH}", "LANG": "C.UTF-8", **extra}


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A notebook's environment, with nothing of the test run's own (no tokens, no CAs)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}",
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
        # Fail an unreachable server fast instead of after xrootd's default minutes.
        "XRD_CONNECTIONWINDOW": "5",
        "XRD_CONNECTIONRETRY": "1",
        **extra,
    }


class Origin:
    """A plain xrootd server, in a sandbox, of /store: the file /store/x is base/data/store/x.
    It traces every request, so its log tells what it sent (`transfers`)."""

    def __init__(self, sandbox: Sandbox, base: Path, port: int = ORIGIN_PORT) -> None:
        self.sandbox, self.port = sandbox, port
        self.data = base / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        run = own(base / "run")
        self.config = base / "origin.cfg"
        directives = [
            f"xrd.port {port}",
            "all.export /store",
            f"oss.localroot {self.data}",
            f"all.adminpath {run}",
            f"all.pidpath {run}",
            "xrootd.trace all",
        ]
        self.config.write_text("\n".join(directives) + "\n")
        self.log_path = base / "origin.log"
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"root://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("a") as log:
            argv = ["xrootd", "-c", str(self.config), "-n", "origin"]
            self.process = self.sandbox.spawn(argv, server_env(), log, as_server=True)
        query = ["xrdfs", self.url, "query", "config", "version"]
        env = server_env({"XRD_CONNECTIONWINDOW": "2", "XRD_CONNECTIONRETRY": "1"})

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise HarnessError(f"the origin exited:\n{self.log_path.read_text()[-3000:]}")
            return self.sandbox.run(query, env, timeout=20).returncode == 0

        wait_for(up, "the origin to answer", 30)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def transfers(self) -> dict[str, dict[str, int]]:
        """{path: {"opens": n, "bytes": sent}} from the origin's request trace."""
        seen: dict[str, dict[str, int]] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if match := re.search(r"Xrootd_Protocol: \S+ open \S+ (/\S+)", line):
                seen.setdefault(match[1], {"opens": 0, "bytes": 0})["opens"] += 1
            elif match := re.search(r" (?:pg)?read (\d+)@\d+ fn=(/\S+)", line):
                seen.setdefault(match[2], {"opens": 0, "bytes": 0})["bytes"] += int(match[1])
        return seen


class CachePod:
    """The cache container of the rendered StatefulSet, run in a sandbox."""

    def __init__(
        self, sandbox: Sandbox, rendered: Mapping[str, Mapping[str, Any]], log: Path
    ) -> None:
        self.sandbox = sandbox
        self.config_map = rendered["ConfigMap"]
        spec = rendered["StatefulSet"]["spec"]["template"]["spec"]
        (self.container,) = spec["containers"]
        self.env = {item["name"]: item["value"] for item in self.container["env"]}
        self.port = self.container["ports"][0]["containerPort"]
        self.mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        self.log_path = log
        self.process: subprocess.Popen[str] | None = None

    @staticmethod
    def hosts_file(rendered: Mapping[str, Mapping[str, Any]], folder: Path) -> Path:
        """/etc/hosts as the kubelet writes it for the pod: this machine's, and hostAliases."""
        spec = rendered["StatefulSet"]["spec"]["template"]["spec"]
        lines = [Path("/etc/hosts").read_text().rstrip("\n"), "# Entries added by HostAliases."]
        for alias in spec.get("hostAliases", []):
            lines.append("\t".join([alias["ip"], *alias["hostnames"]]))
        path = folder / "hosts"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)
        return path

    def volume(self, name: str) -> Path:
        return Path(self.mounts[name])

    def start(self) -> None:
        """Mount the ConfigMap (its files, as they are) and run the container's command, then
        wait until the readiness probe passes."""
        config = self.volume("config")
        config.mkdir(parents=True, exist_ok=True)
        for name, text in self.config_map["data"].items():
            (config / name).write_text(text)
            (config / name).chmod(0o644)
        own(self.volume("run"))
        with self.log_path.open("a") as log:
            self.process = self.sandbox.spawn(
                self.container["command"], server_env(self.env), log, as_server=True
            )
        wait_for(self.ready, "the cache's readiness probe to pass", 30)

    def probe(self, kind: str = "readinessProbe") -> subprocess.CompletedProcess[str]:
        """The rendered probe, run in the pod as the kubelet would (as the container's user)."""
        command = self.container[kind]["exec"]["command"]
        timeout = self.container[kind].get("timeoutSeconds", 1)
        return self.sandbox.run(command, server_env(self.env), as_server=True, timeout=timeout)

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(f"the cache exited:\n{self.log_path.read_text()[-4000:]}")
        return self.probe().returncode == 0

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def cached(self, path: str) -> Path:
        """Where the cache keeps a file (seen from outside the sandbox)."""
        return self.sandbox.path(self.volume("cache")) / path.lstrip("/")

    def usage(self) -> tuple[int, int]:
        """(used, total) bytes of the cache volume, as the cache's purge sees them."""
        stat = os.statvfs(self.sandbox.path(self.volume("cache")))
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize, stat.f_blocks * stat.f_frsize

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def read(
    sandbox: Sandbox, how: str, urls: Sequence[str], env: Mapping[str, str]
) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    """Read urls as a notebook would (harness.xcache_client, a process of its own in
    the sandbox): the result of each URL, and the process."""
    argv = [sys.executable, "-m", "harness.xcache_client", how, *urls]
    done = sandbox.run(argv, env, timeout=180)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(urls):
        raise HarnessError(f"the reader failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return results, done


# --- TLS and tokens -----------------------------------------------------------------------


def _b64(number: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()


class TokenIssuer:
    """A token issuer: its signing key, its published keys (JWKS), and tokens it signs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex[:12]

    def jwks(self) -> dict[str, Any]:
        public = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "alg": "ES256",
                    "use": "sig",
                    "kid": self.kid,
                    "x": _b64(public.x),
                    "y": _b64(public.y),
                }
            ]
        }

    def token(
        self,
        scope: str,
        *,
        lifetime: int = 600,
        audience: str = WLCG_ANY,
        issuer: str | None = None,
        sub: str = "alice",
    ) -> str:
        """A WLCG token (profile 1.0) for scope, e.g. "storage.read:/mc"; a negative lifetime
        gives one that has expired."""
        now = int(time.time())
        claims = {
            "wlcg.ver": "1.0",
            "iss": issuer or self.url,
            "sub": sub,
            "aud": audience,
            "scope": scope,
            "iat": min(now, now + lifetime - 60),
            "nbf": min(now, now + lifetime - 60),
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})


@contextmanager
def issuer_server(
    sandbox: Sandbox, issuer: TokenIssuer, pki: Pki, folder: Path, port: int = ISSUER_PORT
) -> Iterator[Path]:
    """The issuer's HTTPS side (harness.xcache_issuer) in the sandbox; yields the file
    of its request log."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = pki.issue(["localhost", "127.0.0.1"])
    (folder / "issuer.crt").write_bytes(cert)
    (folder / "issuer.key").write_bytes(key)
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    log_path = folder / "issuer.log"
    argv = [
        sys.executable,
        "-m",
        "harness.xcache_issuer",
        f"--issuer={issuer.url}",
        f"--port={port}",
        f"--cert={folder / 'issuer.crt'}",
        f"--key={folder / 'issuer.key'}",
        f"--jwks={folder / 'jwks.json'}",
    ]
    with log_path.open("w") as log:
        process = sandbox.spawn(argv, client_env(folder / "home"), log, as_server=False)
    wait_for(
        lambda: "ready" in log_path.read_text() or process.poll() is not None,
        "the token issuer to listen",
        30,
    )
    if process.poll() is not None:
        raise HarnessError(f"the token issuer exited:\n{log_path.read_text()}")
    try:
        yield log_path
    finally:
        stop(process)
