"""The GitOps tree (gitops/): its sites, its Argo CD and Flux manifests, and the chart as a GitOps
controller sees it.

No Argo CD or Flux controller runs here (their images cannot be pulled). Their CRDs can:
ci/gitops-crds copies Argo CD's and SealedSecrets' from their pinned modules and generates Flux's
from its pinned API modules with controller-gen, and the real API server validates every
manifest against them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.commands import helm, kubectl, run
from harness.modules import module_from_file
from harness.paths import CHART, ROOT

GITOPS = ROOT / "gitops"
SITES = sorted(p.name for p in (GITOPS / "sites").iterdir() if p.is_dir())
CRDS = ROOT / ".tools" / "gitops-crds"

# gitops/check.py is the sites' own script, not a package: loaded from its file.
check = module_from_file(GITOPS / "check.py", "gitops_check")


def values_of(site: str) -> Path:
    return GITOPS / "sites" / site / "values.yaml"


def check_copy(tmp_path: Path) -> Path:
    """A copy of what the checker reads (gitops/ and the chart), for a test to break."""
    shutil.copytree(GITOPS, tmp_path / "gitops")
    shutil.copytree(CHART, tmp_path / "charts" / "facility")
    return tmp_path


def problems(root: Path) -> list[str]:
    return check.check(root).problems


# --- the checker: passes on the repository, names what is broken ------------------------------


def test_checker_passes_on_the_repository() -> None:
    done = subprocess.run(
        [sys.executable, str(GITOPS / "check.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "0 problem(s)" in done.stderr


def test_applicationset_makes_one_application_per_site_folder(tmp_path: Path) -> None:
    root = check_copy(tmp_path)
    shutil.copytree(root / "gitops/sites/cern-t3", root / "gitops/sites/new-t3")
    report = check.Report(root)
    names = {
        app["metadata"]["name"]
        for path, app in check.applications(report, root / "gitops/argocd")
        if path.name == "applicationset.yaml"
    }
    assert names == {f"facility-{site}" for site in [*SITES, "new-t3"]}


def test_a_missing_values_file_is_named(tmp_path: Path) -> None:
    root = check_copy(tmp_path)
    application = root / "gitops/argocd/application.yaml"
    text = application.read_text().replace("cms-t2/values.yaml", "cms-t2/site-values.yaml")
    application.write_text(text)
    assert problems(root) == [
        "gitops/argocd/application.yaml (Application facility-cms-t2): "
        "values file gitops/sites/cms-t2/site-values.yaml does not exist"
    ]


def test_a_missing_secret_is_named(tmp_path: Path) -> None:
    root = check_copy(tmp_path)
    (root / "gitops/sites/cern-t3/secrets/cern-t3-sso-client.sealed.yaml").unlink()
    values = root / "gitops/sites/cms-t2/values.yaml"
    values.write_text(values.read_text() + "hub: {existingSecret: cms-t2-hub}\n")
    found = problems(root)
    assert len(found) == 3, found
    assert (
        "gitops/sites/cern-t3/values.yaml: auth.existingSecret names Secret 'cern-t3-sso-client', "
        "but gitops/sites/cern-t3/secrets/cern-t3-sso-client.sealed.yaml (for Argo CD) does not "
        "exist" in found[0]
    )
    assert all("hub.existingSecret names Secret 'cms-t2-hub'" in line for line in found[1:])


def test_a_secret_in_plain_text_is_refused(tmp_path: Path) -> None:
    root = check_copy(tmp_path)
    plain = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leak"},
             "stringData": {"password": "hunter2"}}  # fmt: skip
    (root / "gitops/sites/cms-t2/secrets/leak.yaml").write_text(yaml.safe_dump(plain))
    values = root / "gitops/sites/cern-t3/values.yaml"
    values.write_text(values.read_text().replace("auth:\n", "auth:\n  clientSecret: hunter2\n"))
    assert sorted(problems(root)) == [
        "gitops/sites/cern-t3/values.yaml: auth.clientSecret is set in plain text; "
        "use auth.existingSecret",
        "gitops/sites/cms-t2/secrets/leak.yaml: Secret 'leak' is not encrypted: password; "
        "seal it with gitops/seal_secret.py",
    ]


def test_no_secret_in_git_is_readable() -> None:
    # What the checker relies on, checked directly on the committed files: SOPS left only
    # ciphertext in data, and the sealed secrets carry only encryptedData.
    for site in SITES:
        for path in (GITOPS / "sites" / site / "secrets").iterdir():
            (doc,) = check.documents(path)
            if path.name.endswith(".sops.yaml"):
                assert all(check.ENCRYPTED.match(v) for v in doc["data"].values()), path
                assert doc["sops"]["age"][0]["recipient"].startswith("age1"), path
            else:
                assert doc["kind"] == "SealedSecret", path
                assert "data" not in doc["spec"], path


# --- the sites and manifests against the real API server -------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_site_values_pass_helm_lint_strict(site: str) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(values_of(site)))
    assert "0 chart(s) failed" in done.stdout


@pytest.fixture(scope="module")
def gitops_crds(cluster: Path) -> Path:
    """The controllers' CRDs in the local cluster, and the namespaces the manifests live in."""
    run([str(ROOT / "ci" / "gitops-crds")])
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS.resolve()))
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for namespace in ("argocd", "flux-system", *(f"facility-{site}" for site in SITES)):
        kubectl("create", "namespace", namespace, check=False)
    return CRDS


def dry_run(manifest: str) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)


def test_argocd_manifests_are_valid(gitops_crds: Path) -> None:
    for path in sorted((GITOPS / "argocd").glob("*.yaml")):
        done = dry_run(path.read_text())
        assert done.returncode == 0, f"{path.name}: {done.stderr}"
        assert "created (server dry run)" in done.stdout


def test_flux_manifests_are_valid(gitops_crds: Path) -> None:
    for path in (GITOPS / "flux" / "source.yaml", GITOPS / "flux" / "sites.yaml"):
        done = dry_run(path.read_text())
        assert done.returncode == 0, f"{path.name}: {done.stderr}"


@pytest.mark.parametrize("site", SITES)
def test_site_as_flux_applies_it(site: str, gitops_crds: Path) -> None:
    """The site folder built by kustomize, as kustomize-controller does; the SOPS Secrets are
    decrypted by Flux before they are applied, so here they are checked for shape only."""
    built = kubectl("kustomize", str(GITOPS / "sites" / site)).stdout
    docs = [doc for doc in yaml.safe_load_all(built) if doc]
    encrypted = [doc for doc in docs if "sops" in doc]
    assert encrypted
    assert all(doc["kind"] == "Secret" for doc in encrypted)
    plain = yaml.safe_dump_all([doc for doc in docs if "sops" not in doc])
    done = dry_run(plain)
    assert done.returncode == 0, done.stderr
    release = next(doc for doc in docs if doc["kind"] == "HelmRelease")
    values = next(doc for doc in docs if doc["kind"] == "ConfigMap")
    assert release["spec"]["valuesFrom"][0]["name"] == values["metadata"]["name"]
    assert yaml.safe_load(values["data"]["values.yaml"]) == yaml.safe_load(
        values_of(site).read_text()
    )


@pytest.mark.parametrize("site", SITES)
def test_sealed_secrets_are_valid(site: str, gitops_crds: Path) -> None:
    for path in (GITOPS / "sites" / site / "secrets").glob("*.sealed.yaml"):
        done = dry_run(path.read_text())
        assert done.returncode == 0, f"{path}: {done.stderr}"


def test_a_malformed_helmrelease_is_refused_by_its_crd(gitops_crds: Path) -> None:
    # The schemas are real: a HelmRelease without its chart's source is refused by name.
    release = yaml.safe_load((GITOPS / "flux" / "base" / "helmrelease.yaml").read_text())
    del release["spec"]["chart"]["spec"]["sourceRef"]
    release["metadata"]["namespace"] = "flux-system"
    done = dry_run(yaml.safe_dump(release))
    assert done.returncode != 0
    assert "spec.chart.spec.sourceRef: Required value" in done.stderr


@pytest.mark.parametrize("site", SITES)
def test_site_renders_into_objects_the_api_server_accepts(site: str, gitops_crds: Path) -> None:
    namespace = f"facility-{site}"
    manifest = helm(
        "template", "facility", str(CHART), "-n", namespace, "-f", str(values_of(site))
    ).stdout
    done = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=manifest)
    assert "created (server dry run)" in done.stdout


# --- GitOps-safe: no drift after an install ----------------------------------------------------


@pytest.fixture
def installed_site(namespace: str) -> Iterator[tuple[str, str]]:
    site = "cms-t2"
    values = ["-f", str(values_of(site)), "--set", "edge.service.type=ClusterIP"]
    helm("install", "facility", str(CHART), "-n", namespace, *values, "--skip-crds")
    yield namespace, site
    helm("uninstall", "facility", "-n", namespace, "--ignore-not-found", check=False)


def test_live_objects_match_a_fresh_render(installed_site: tuple[str, str]) -> None:
    """What Argo CD's and Flux's drift detection see: a fresh render of the same values,
    compared server-side with the live objects, differs in nothing."""
    namespace, site = installed_site
    values = ["-f", str(values_of(site)), "--set", "edge.service.type=ClusterIP"]
    # Without the `helm test` Pods: hooks that `helm template` renders, which an install never
    # makes (and Flux runs only when asked, spec.test.enable).
    manifest = helm(
        "template", "facility", str(CHART), "-n", namespace, *values, "--skip-tests"
    ).stdout
    done = kubectl(
        "diff", "--server-side", "--force-conflicts", "--field-manager=helm", "-n", namespace,
        "-f", "-", input=manifest, check=False,
    )  # fmt: skip
    # kubectl diff: 0 = no difference, 1 = differences, >1 = error.
    assert done.returncode == 0, done.stdout + done.stderr
