"""Checks the GitOps tree before Argo CD or Flux sees it: python3 gitops/check.py [REPO].

What a controller would only report after a sync (a values file that is not there, a Secret
that nothing provides, a secret in plain text) is reported here, naming the file and the fix:

- every Argo CD Application, and every Application the ApplicationSet makes (one per site
  folder), points at paths and values files that exist in the repository;
- every Flux Kustomization points at a folder with a kustomization.yaml, and the HelmRelease at
  the chart;
- every Secret a site's values name is provided in that site's secrets/ folder, both sealed
  (<name>.sealed.yaml, for Argo CD) and SOPS-encrypted (<name>.sops.yaml, listed in the site's
  kustomization.yaml, for Flux);
- no Secret and no values file under gitops/ holds a secret in plain text.

Exit status 0 when all holds; otherwise 1, with one line per problem.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART_PATH = "charts/facility"
# Values that name a Secret the site must provide (dotted path -> what it holds).
SECRET_VALUES = {
    "auth.existingSecret": "the OAuth client (client-id, client-secret)",
    "hub.existingSecret": "the hub's cookie secret and crypt key",
    "edge.tls.secretName": "the edge's TLS certificate",
    "xcache.tls.secretName": "XCache's TLS certificate",
    "operator.backends.htcondor.tokenSecret": "the HTCondor tokens",
    "operator.backends.slurm.jwtKeySecret": "the SLURM JWT key",
}
# Values that must never be set in a values file kept in git.
PLAINTEXT_VALUES = {"auth.clientSecret": "auth.existingSecret", "hub.db.url": "hub.existingSecret"}
ENCRYPTED = re.compile(r"^ENC\[AES256_GCM,data:.*,type:\w+\]$")


@dataclass
class Report:
    root: Path
    problems: list[str] = field(default_factory=list)

    def problem(self, where: Path | str, message: str) -> None:
        where = where.relative_to(self.root) if isinstance(where, Path) else where
        self.problems.append(f"{where}: {message}")


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if isinstance(doc, dict)]


def dig(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


# --- sites -------------------------------------------------------------------------------------


def check_site(report: Report, site: Path) -> None:
    values_file = site / "values.yaml"
    if not values_file.is_file():
        report.problem(site, "no values.yaml: every site folder needs one")
        return
    values = yaml.safe_load(values_file.read_text()) or {}
    for dotted, instead in PLAINTEXT_VALUES.items():
        if dig(values, dotted):
            report.problem(values_file, f"{dotted} is set in plain text; use {instead}")
    needed = {dig(values, dotted): dotted for dotted in SECRET_VALUES if dig(values, dotted)}
    for pull_secret in values.get("imagePullSecrets") or []:
        needed[pull_secret] = "imagePullSecrets"
    kustomization = site / "kustomization.yaml"
    resources = documents(kustomization)[0].get("resources", []) if kustomization.is_file() else []
    if not kustomization.is_file():
        report.problem(site, "no kustomization.yaml (what Flux applies for the site)")
    namespace = f"facility-{site.name}"
    for name, dotted in sorted(needed.items()):
        sealed = site / "secrets" / f"{name}.sealed.yaml"
        sops = site / "secrets" / f"{name}.sops.yaml"
        what = f"{dotted} names Secret '{name}'"
        if not sealed.is_file():
            report.problem(
                values_file,
                f"{what}, but {sealed.relative_to(report.root)} (for "
                "Argo CD) does not exist; make it with gitops/seal_secret.py",
            )
        else:
            check_sealed(report, sealed, name, namespace)
        if not sops.is_file():
            report.problem(
                values_file,
                f"{what}, but {sops.relative_to(report.root)} (for "
                "Flux) does not exist; make it with gitops/seal_secret.py",
            )
        elif f"secrets/{sops.name}" not in resources:
            report.problem(kustomization, f"resources does not list secrets/{sops.name}")


def check_sealed(report: Report, path: Path, name: str, namespace: str) -> None:
    docs = documents(path)
    if len(docs) != 1 or docs[0].get("kind") != "SealedSecret":
        report.problem(path, "must hold exactly one SealedSecret")
        return
    meta = docs[0].get("metadata", {})
    if meta.get("name") != name or meta.get("namespace") != namespace:
        report.problem(
            path,
            f"must be SealedSecret {namespace}/{name} (a sealed secret only "
            "opens under the name and namespace it was sealed for)",
        )
    if not docs[0].get("spec", {}).get("encryptedData"):
        report.problem(path, "spec.encryptedData is empty")


def check_no_plaintext_secrets(report: Report, gitops: Path) -> None:
    for path in sorted(gitops.rglob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") != "Secret":
                continue
            payload = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
            plain = [key for key, value in payload.items() if not ENCRYPTED.match(str(value))]
            if plain or "sops" not in doc:
                keys = ", ".join(plain) or "(no sops metadata)"
                report.problem(
                    path,
                    f"Secret '{doc.get('metadata', {}).get('name')}' is not "
                    f"encrypted: {keys}; seal it with gitops/seal_secret.py",
                )


# --- Argo CD -----------------------------------------------------------------------------------


def applications(report: Report, argocd: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Application, those an ApplicationSet makes included (git directories generator)."""
    for path in sorted(argocd.glob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") == "Application":
                yield path, doc
            elif doc.get("kind") == "ApplicationSet":
                yield from generated_applications(report, path, doc)


def generated_applications(
    report: Report, path: Path, appset: dict[str, Any]
) -> Iterator[tuple[Path, dict[str, Any]]]:
    template = yaml.safe_dump(appset["spec"]["template"])
    for generator in appset["spec"].get("generators", []):
        for pattern in generator.get("git", {}).get("directories", []):
            folders = sorted(p for p in report.root.glob(pattern["path"]) if p.is_dir())
            if not folders:
                report.problem(
                    path, f"the git generator's path {pattern['path']} matches no folder"
                )
            for folder in folders:
                relative = folder.relative_to(report.root).as_posix()
                text = template.replace("{{.path.path}}", relative)
                yield path, yaml.safe_load(text.replace("{{.path.basename}}", folder.name))


def check_application(report: Report, path: Path, app: dict[str, Any]) -> None:
    name = app.get("metadata", {}).get("name", "?")
    spec = app.get("spec", {})
    sources = spec.get("sources") or ([spec["source"]] if "source" in spec else [])
    where = f"{path.relative_to(report.root)} (Application {name})"
    if not sources:
        report.problem(where, "spec.sources is empty")
    refs = {source["ref"] for source in sources if "ref" in source}
    for index, source in enumerate(sources):
        for key in ("repoURL", "targetRevision"):
            if not source.get(key):
                report.problem(where, f"sources[{index}].{key} is missing")
        if "path" in source and not (report.root / source["path"]).is_dir():
            report.problem(where, f"sources[{index}].path {source['path']} does not exist")
        for value_file in source.get("helm", {}).get("valueFiles", []):
            ref, _, relative = value_file.partition("/")
            if not ref.startswith("$") or ref[1:] not in refs:
                report.problem(where, f"{value_file}: no source has ref '{ref.lstrip('$')}'")
            elif not (report.root / relative).is_file():
                report.problem(where, f"values file {relative} does not exist")
    if not spec.get("destination", {}).get("namespace"):
        report.problem(where, "spec.destination.namespace is missing")


# --- Flux --------------------------------------------------------------------------------------


def check_flux(report: Report, flux: Path) -> None:
    docs = [(path, doc) for path in sorted(flux.rglob("*.yaml")) for doc in documents(path)]
    repositories = {
        doc["metadata"]["name"] for _, doc in docs if doc.get("kind") == "GitRepository"
    }
    for path, doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        spec = doc.get("spec", {})
        where = f"{path.relative_to(report.root)} ({kind} {name})"
        if kind == "Kustomization" and "sourceRef" in spec:
            folder = report.root / spec.get("path", "")
            if not (folder / "kustomization.yaml").is_file():
                report.problem(where, f"path {spec.get('path')} has no kustomization.yaml")
            if spec["sourceRef"].get("name") not in repositories:
                report.problem(where, f"sourceRef {spec['sourceRef'].get('name')} is not defined")
        elif kind == "HelmRelease":
            chart = spec.get("chart", {}).get("spec", {})
            if not (report.root / chart.get("chart", "") / "Chart.yaml").is_file():
                report.problem(where, f"chart {chart.get('chart')} has no Chart.yaml")
            if chart.get("sourceRef", {}).get("name") not in repositories:
                report.problem(where, f"sourceRef {chart.get('sourceRef')} is not defined")


def check(root: Path) -> Report:
    report = Report(root.resolve())
    gitops = report.root / "gitops"
    for site in sorted(p for p in (gitops / "sites").iterdir() if p.is_dir()):
        check_site(report, site)
    check_no_plaintext_secrets(report, gitops)
    for path, app in applications(report, gitops / "argocd"):
        check_application(report, path, app)
    check_flux(report, gitops / "flux")
    return report


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    report = check(root)
    for line in report.problems:
        print(line, file=sys.stderr)
    print(f"gitops: {len(report.problems)} problem(s)", file=sys.stderr)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
