"""Puts a Secret into a site's folder, encrypted for both GitOps ways, never in plain text.

    python3 gitops/seal_secret.py SITE NAME KEY=VALUE|KEY=@FILE ...

writes gitops/sites/SITE/secrets/NAME.sealed.yaml (a SealedSecret for Argo CD, sealed with the
site's public certificate gitops/sites/SITE/sealing-cert.pem, which `kubeseal --fetch-cert`
gives) and NAME.sops.yaml (the Secret encrypted by SOPS for the site's age recipient in
gitops/.sops.yaml, decrypted by Flux), and lists the latter in the site's kustomization.yaml.
The values go to kubeseal and sops through pipes only. Needs kubeseal and sops on PATH (or in
.tools/bin: `ci/tools kubeseal sops`).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GITOPS = ROOT / "gitops"


def command(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".tools" / "bin"))
    if not found:
        sys.exit(f"{name} is not on PATH: build it with `ci/tools {name}`")
    return found


def parse_pairs(pairs: list[str]) -> dict[str, bytes]:
    data = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"'{pair}': write KEY=VALUE or KEY=@FILE")
        data[key] = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
    return data


def secret_manifest(name: str, namespace: str, data: dict[str, bytes]) -> str:
    encoded = {key: base64.b64encode(value).decode() for key, value in sorted(data.items())}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": encoded,
    }
    return yaml.safe_dump(secret, sort_keys=False)


def run(argv: list[str], stdin: str) -> str:
    # From the repository's root: sops matches its creation rules against relative paths.
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{Path(argv[0]).name} failed: {done.stderr.strip()}")
    return done.stdout


def add_to_kustomization(site: Path, entry: str) -> None:
    path = site / "kustomization.yaml"
    text = path.read_text()
    if f"- {entry}\n" in text:
        return
    kustomization = yaml.safe_load(text)
    if "resources" not in kustomization:
        sys.exit(f"{path}: has no resources list to add {entry} to")
    # Append under `resources:` keeping the file's comments (a YAML dump would drop them).
    last = kustomization["resources"][-1]
    path.write_text(text.replace(f"  - {last}\n", f"  - {last}\n  - {entry}\n", 1))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    site_name, name, pairs = argv[0], argv[1], argv[2:]
    site = GITOPS / "sites" / site_name
    cert = site / "sealing-cert.pem"
    if not cert.is_file():
        sys.exit(f"{cert} is missing: save the site's `kubeseal --fetch-cert` output there")
    namespace = f"facility-{site_name}"
    manifest = secret_manifest(name, namespace, parse_pairs(pairs))
    secrets = site / "secrets"
    secrets.mkdir(exist_ok=True)

    sealed = run([command("kubeseal"), "--cert", str(cert), "--format", "yaml"], manifest)
    (secrets / f"{name}.sealed.yaml").write_text(sealed)

    target = secrets / f"{name}.sops.yaml"
    sops = [command("sops"), "--config", str(GITOPS / ".sops.yaml"), "--encrypt"]
    sops += ["--filename-override", str(target.relative_to(ROOT)), "/dev/stdin"]
    target.write_text(run(sops, manifest))
    add_to_kustomization(site, f"secrets/{target.name}")
    print(f"wrote {target.relative_to(ROOT)} and {name}.sealed.yaml beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
