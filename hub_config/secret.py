"""Create the hub's random secrets at run time, once.

The chart never generates secrets in a template (renders must be deterministic for GitOps), so
the hub's init container calls this module: it makes the Secret with a cookie secret, the key
that encrypts auth_state and the proxy token if it does not exist yet, owned by the hub
Deployment so that uninstalling the release removes it. An existing Secret keeps its values; a
key it lacks (one added by a newer chart) is added.

usage: python -m hub_config.secret --secret NAME --owner-deployment NAME [--namespace NS]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


KEYS = ("cookie-secret", "crypt-key", "proxy-token")


def new_secret_data() -> dict[str, str]:
    """Fresh random values, 32 bytes each in hex (what JupyterHub expects of the first two)."""
    return {key: secrets.token_hex(32) for key in KEYS}


def ensure_secret(api: client.ApiClient, namespace: str, name: str, owner_deployment: str) -> str:
    """Create the Secret if missing, or add the keys it lacks. Returns what was done."""
    core = client.CoreV1Api(api)
    try:
        existing = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
    else:
        missing = {k: v for k, v in new_secret_data().items() if k not in (existing.data or {})}
        if not missing:
            return "exists, kept"
        core.patch_namespaced_secret(name, namespace, {"stringData": missing})
        return f"exists, added {', '.join(sorted(missing))}"
    owner = client.AppsV1Api(api).read_namespaced_deployment(owner_deployment, namespace)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name,
            labels=owner.metadata.labels,
            owner_references=[
                client.V1OwnerReference(
                    api_version="apps/v1",
                    kind="Deployment",
                    name=owner.metadata.name,
                    uid=owner.metadata.uid,
                )
            ],
        ),
        type="Opaque",
        string_data=new_secret_data(),
    )
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as error:
        if error.status == 409:  # another hub start won the race: keep its values
            return "exists, kept"
        raise
    return "created"


def api_message(error: ApiException) -> str:
    """The API server's own explanation, from the Status object in the error body."""
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="name of the Secret to ensure")
    parser.add_argument("--owner-deployment", required=True, help="Deployment that owns it")
    parser.add_argument("--namespace", help="default: the pod's own namespace")
    args = parser.parse_args(argv)
    namespace = args.namespace or SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        config.load_incluster_config()
    except config.ConfigException:  # outside a pod (tests, an admin's shell): use kubeconfig
        config.load_kube_config()
    with client.ApiClient() as api:
        try:
            done = ensure_secret(api, namespace, args.secret, args.owner_deployment)
        except ApiException as error:
            print(
                f"cannot ensure secret {namespace}/{args.secret} (owner: Deployment "
                f"{args.owner_deployment}): {error.status} {error.reason}: {api_message(error)}",
                file=sys.stderr,
            )
            return 1
        except urllib3.exceptions.HTTPError as error:
            print(f"cannot reach the Kubernetes API server: {error}", file=sys.stderr)
            return 1
    print(f"secret {namespace}/{args.secret}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
