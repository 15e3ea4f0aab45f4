"""The images' files, read without building anything: every Dockerfile takes its base as a build
argument and ends as a non-root user; every PyPI and npm package is pinned exactly, the shared
scientific stack once (images/requirements/science.txt); each image's pins agree with its
distribution's pyproject.toml, and it copies no other process's code. The built images
themselves are tested in tests/images (make test-images) and tests/e2e."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from harness.paths import ROOT

IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
PIN = re.compile(r"^([a-z0-9][a-z0-9-]*)==([0-9][^\s;]*)$")


def pins(path: Path) -> dict[str, str]:
    """name -> version of a generated requirement file; fails on any line that is not a pin."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.relative_to(ROOT)}: not an exact pin: {line!r}"
        out[match[1]] = match[2]
    return out


def canonical(requirement: str) -> tuple[str, str]:
    name, version = requirement.split("==")
    return re.sub(r"[-_.]+", "-", name).lower(), version


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[d.parent.name for d in DOCKERFILES])
def test_dockerfile_base_is_a_build_argument_and_user_is_not_root(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    stages = {line.split()[3] for line in lines if re.match(r"(?i)^FROM \S+ AS \S+", line)}
    if any(base not in ("scratch", *stages) for base in froms):
        first_from = next(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
        assert any(line.startswith("ARG BASE_IMAGE") for line in lines[:first_from])
        assert all(base in ("scratch", "${BASE_IMAGE}", *stages) for base in froms), froms
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("0", "root")


def test_shared_stack_is_pinned_once() -> None:
    science = pins(IMAGES / "requirements/science.txt")
    analysis = pins(IMAGES / "analysis/requirements.txt")
    for name in ("dask", "distributed", "coffea", "awkward", "uproot", "hist", "xrootd"):
        assert name in science, f"{name} is not in science.txt"
    both = set(science) & set(analysis)
    assert not both, f"pinned in science.txt and again in analysis/requirements.txt: {both}"
    # The worker installs science.txt alone; the analysis image both files.
    for image in ("analysis", "worker"):
        dockerfile = (IMAGES / image / "Dockerfile").read_text()
        assert "-r /tmp/build/science.txt" in dockerfile
        assert "--no-deps" in dockerfile
        assert "pip check" in dockerfile
        assert (
            "images/requirements/science.txt science.txt"
            in (IMAGES / image / "repo-files").read_text()
        )


def distribution_pins(folder: str) -> dict[str, str]:
    """name -> version of the dependencies of the repository's distribution in `folder`, but the
    repository's own (facility-*)."""
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    return dict(canonical(r) for r in project["dependencies"] if not r.startswith("facility-"))


def test_hub_pins_agree_with_its_distribution() -> None:
    wanted = distribution_pins("hub_config")
    hub = pins(IMAGES / "hub/requirements.txt")
    assert {name: hub.get(name) for name in wanted} == wanted
    # jupyterhub-singleuser in the analysis image runs the hub's version.
    assert pins(IMAGES / "analysis/requirements.txt")["jupyterhub"] == wanted["jupyterhub"]


def test_proxy_pins_are_exact_and_locked() -> None:
    package = json.loads((IMAGES / "proxy/package.json").read_text())
    lock = json.loads((IMAGES / "proxy/package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: {version} is not exact"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert all("integrity" in entry for key, entry in lock["packages"].items() if key)


def test_operator_pins_agree_with_its_distribution_and_the_workers() -> None:
    wanted = {**distribution_pins("operators"), **distribution_pins("client")}
    operator = pins(IMAGES / "operator/requirements.txt")
    assert {name: operator.get(name) for name in wanted} == wanted
    # The operator imports facility_client (the shared names) and asks the schedulers through
    # Dask's HTTP API: the Dask the scheduler pods run.
    science = pins(IMAGES / "requirements/science.txt")
    for name in ("dask", "distributed"):
        assert operator[name] == science[name]
    # It makes the workers itself: dask-jobqueue is the notebooks' business, not the operator's.
    assert "dask-jobqueue" not in operator


def test_client_pins_are_the_workers() -> None:
    science = pins(IMAGES / "requirements/science.txt")
    wanted = distribution_pins("client")
    assert {name: science.get(name) for name in wanted} == wanted


# Each process's image holds its own distribution (and what it depends on), no other one.
OWN_CODE = {
    "hub": {"hub_config"},
    "operator": {"operators", "client"},
    "analysis": {"client", "examples"},
    "worker": {"client"},
}


@pytest.mark.parametrize("image", sorted(OWN_CODE))
def test_each_image_copies_only_its_own_distribution(image: str) -> None:
    listed = {
        line.split()[0]
        for line in (IMAGES / image / "repo-files").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    code = {path for path in listed if not path.startswith("images/")}
    assert code == OWN_CODE[image]
