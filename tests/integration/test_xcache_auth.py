"""XCache with token authorization, run from the chart's rendering (xcache.tls and xcache.auth):
root:// over TLS, SciTokens / WLCG tokens checked by Debian's libXrdAccSciTokens against an
issuer that the test runs over HTTPS (its certificate from a test CA that only the cache's CA
bundle, mounted as xcache.auth.caBundle mounts it, trusts).

Readers are notebooks as hub_config makes them: the cache's address from the hub's
environment, the user's token in the file where WLCG tools look for it (written by
facility_client.tokens), and the CA of the cache's certificate (X509_CERT_DIR).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from facility_client import tokens

from harness.chart import handed_over
from harness.pki import Pki
from harness.xcache_data import local_digests, write_nanoaod
from harness.xcache_sandbox import (
    SERVICE,
    CachePod,
    Origin,
    Sandbox,
    TokenIssuer,
    client_env,
    issuer_server,
    read,
    render,
    workdir,
    xcache_values,
)
from hub_config.spawner import environment

ISSUER = "https://localhost:8443"
FILES = {"/store/mc/ttbar/nano.root": 1, "/store/data/run1/nano.root": 2}
FIRST = "/store/mc/ttbar/nano.root"


@dataclass
class AuthLab:
    base: Path
    sandbox: Sandbox
    cache: CachePod
    issuer: TokenIssuer
    issuer_log: Path
    ca_dir: Path
    files: dict[str, dict[str, Any]]
    values: dict[str, Any]

    def url(self, path: str) -> str:
        return f"root://{SERVICE}:{self.cache.port}/{path}"

    def read_with(
        self, token: str | None, how: str, *paths: str, mode: int = 0o600, case: str = "t"
    ) -> tuple[list[dict[str, Any]], Any]:
        """Read as a notebook whose user's token is `token`, in the WLCG discovery file
        ($XDG_RUNTIME_DIR/bt_u<uid>) that facility_client.tokens writes."""
        runtime = self.base / "runtime" / case
        shutil.rmtree(runtime, ignore_errors=True)
        runtime.mkdir(parents=True, mode=0o700)
        if token is not None:
            tokens.write(runtime / f"bt_u{os.getuid()}", token)
            (runtime / f"bt_u{os.getuid()}").chmod(mode)
        env = client_env(
            self.base / "home", XDG_RUNTIME_DIR=str(runtime), X509_CERT_DIR=str(self.ca_dir)
        )
        return read(self.sandbox, how, [self.url(p) for p in paths], env)


@pytest.fixture(scope="module")
def lab() -> Iterator[AuthLab]:
    base = workdir("xcache-auth-")
    try:
        yield from running_lab(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def running_lab(base: Path) -> Iterator[AuthLab]:
    pki = Pki()
    issuer = TokenIssuer(ISSUER)
    issuers = [{"name": "facility", "url": ISSUER, "basePaths": ["/store"]}]
    values = xcache_values(
        base,
        tls={"secretName": "xcache-tls"},
        auth={"enabled": True, "issuers": issuers, "caBundle": {"configMap": "issuer-ca"}},
    )
    rendered = render(values, base)
    paths = values["xcache"]["paths"]
    # The pod's volumes: the TLS Secret (its names: the Service's address, and localhost) and
    # the issuer's CA bundle, where the StatefulSet mounts them.
    pki.tls_secret(Path(paths["tls"]), [SERVICE, "localhost", "127.0.0.1"])
    spec = rendered["StatefulSet"]["spec"]["template"]["spec"]
    (bundle_mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "issuer-ca"]
    binds = {
        "/etc/hosts": CachePod.hosts_file(rendered, base),
        bundle_mount["mountPath"]: pki.system_bundle_with_ca(base / "ca-bundle.crt"),
    }
    sandbox = Sandbox(tmpfs={paths["data"]: "64m"}, binds=binds, writable=[base])
    try:
        origin = Origin(sandbox, base / "origin")
        files = {}
        for path, seed in FILES.items():
            local = write_nanoaod(origin.data / path.lstrip("/"), 10_000, seed)
            files[path] = local_digests(local)
        origin.start()
        with issuer_server(sandbox, issuer, pki, base / "issuer") as issuer_log:
            cache = CachePod(sandbox, rendered, base / "xcache.log")
            cache.start()  # the readiness probe passes: TLS, and the pod's own sss key
            yield AuthLab(
                base, sandbox, cache, issuer, issuer_log, pki.ca_dir(base / "ca"), files, values
            )
    finally:
        sandbox.close()


def test_the_rendered_configuration_asks_for_tokens_over_tls(lab: AuthLab) -> None:
    config = lab.cache.config_map["data"]
    assert "sec.protbind * only ztn sss" in config["xcache.cfg"]
    assert "xrootd.tls capable all" in config["xcache.cfg"]
    assert f"issuer = {ISSUER}" in config["scitokens.cfg"]


@pytest.mark.parametrize("how", ["uproot", "fsspec"])
def test_a_valid_token_reads(lab: AuthLab, how: str) -> None:
    token = lab.issuer.token("storage.read:/")
    paths = list(lab.files)
    results, done = lab.read_with(token, how, *paths, case=how)
    assert done.returncode == 0, done.stdout + done.stderr
    for path, result in zip(paths, results, strict=True):
        expected = lab.files[path]
        if how == "fsspec":
            assert result["sha256"] == expected["bytes"]
        else:
            assert {k: result[k] for k in ("entries", "sha256")} == expected["arrays"]
    # The cache fetched the issuer's signing keys over HTTPS, trusting the mounted CA bundle.
    requests = lab.issuer_log.read_text()
    assert "GET /.well-known/openid-configuration" in requests
    assert "GET /jwks" in requests


def test_a_token_reads_only_within_its_scope(lab: AuthLab) -> None:
    token = lab.issuer.token("storage.read:/mc")
    (inside,), done = lab.read_with(token, "uproot", "/store/mc/ttbar/nano.root", case="in")
    assert done.returncode == 0, inside
    (outside,), done = lab.read_with(token, "uproot", "/store/data/run1/nano.root", case="out")
    assert done.returncode == 1
    print(f"outside the token's scope: {outside['error']}")
    assert "permission denied" in outside["error"].lower() or "[3010]" in outside["error"]


def forged(lab: AuthLab) -> str:
    """A token naming the facility's issuer, signed by another key under the same key id."""
    impostor = TokenIssuer(ISSUER)
    impostor.kid = lab.issuer.kid
    return impostor.token("storage.read:/")


# case: (the token, what the cache logs as the reason; None: the token never reaches it)
REFUSED: dict[str, tuple[Callable[[AuthLab], str | None], str | None]] = {
    "no token": (lambda lab: None, None),
    "expired": (
        lambda lab: lab.issuer.token("storage.read:/", lifetime=-120),
        "token verification failed: token expired",
    ),
    "wrong issuer": (
        lambda lab: TokenIssuer("https://localhost:8444").token("storage.read:/"),
        "Token issuer is not in list of allowed issuers",
    ),
    "not signed by the issuer": (forged, "Invalid signature"),
    "wrong audience": (
        lambda lab: lab.issuer.token("storage.read:/", audience="https://elsewhere.example.org"),
        "'aud' claim verification failed",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_read_without_a_valid_token_is_refused(lab: AuthLab, case: str) -> None:
    make_token, reason = REFUSED[case]
    before = len(lab.cache.log())
    (result,), done = lab.read_with(make_token(lab), "uproot", FIRST, case=case)
    said = lab.cache.log()[before:]
    print(f"{case}: {result.get('error')}")
    assert done.returncode == 1
    if reason is None:
        assert "Auth failed" in result["error"]
        assert "login as" not in said
    else:
        assert reason in said


def test_a_token_file_readable_by_others_is_not_used(lab: AuthLab) -> None:
    # The WLCG discovery rules: a token file that others may read is ignored by the client.
    before = len(lab.cache.log())
    token = lab.issuer.token("storage.read:/")
    (result,), done = lab.read_with(token, "uproot", FIRST, mode=0o644, case="mode")
    print(f"token file of mode 0644: {result.get('error')}")
    assert done.returncode == 1
    assert "Auth failed" in result["error"]
    assert "login as" not in lab.cache.log()[before:]


def test_a_notebook_reads_with_what_its_pod_gets(lab: AuthLab, tmp_path: Path) -> None:
    # What the hub gives a user's server (hub_config.spawner, from the chart's values): the
    # cache's address; the user's token is in the discovery file, as facility-token writes it.
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(lab.values))
    pod_env = environment(handed_over(values))
    address = pod_env["FACILITY_XCACHE"]
    # The cache's CA: ca.crt of xcache.tls.secretName, which the server's pod mounts there.
    assert pod_env["X509_CERT_FILE"] == "/etc/facility/xcache-ca/ca.crt"
    assert address == f"root://{SERVICE}:{lab.cache.port}"
    token = lab.issuer.token("storage.read:/")
    path = "/store/mc/ttbar/nano.root"
    runtime = lab.base / "runtime" / "notebook"
    runtime.mkdir(parents=True, mode=0o700)
    tokens.write(runtime / f"bt_u{os.getuid()}", token)
    env = client_env(
        lab.base / "home",
        XDG_RUNTIME_DIR=str(runtime),
        # The same CA file, here where the test keeps it: a plain PEM, no hashed folder.
        X509_CERT_FILE=str(lab.ca_dir / "facility-test-ca.pem"),
        FACILITY_XCACHE=address,
    )
    (result,), done = read(lab.sandbox, "uproot", [f"{address}/{path}"], env)
    assert done.returncode == 0, result
    assert {k: result[k] for k in ("entries", "sha256")} == lab.files[path]["arrays"]
