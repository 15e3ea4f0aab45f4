"""Every repository path that the design docs (docs/*.md) and the README name exists.

A path is named in two ways: as inline code (`charts/facility/templates/edge/`, `ci/up`,
`tests/e2e/test_facility.py::test_...`) or as a relative Markdown link ([...](workers.md)).
Inline code counts as a path when it is one word that contains a `/` or ends in one of
EXTENSIONS; it is looked up from the repository's root (a bare file name, such as
`values.schema.json`, anywhere in the repository). A link is looked up from its document's
folder. `path::name` also needs a `def name` or `class name` in that file.

Not paths, and skipped: URLs and anything with a `:` (`tls://`, `host:port`, image
references), placeholders and globs (`<`, `*`, `{`, `$`), absolute paths and `~` (inside a pod,
a node or a user's home, not in the repository), host names and CIDRs (`k8s.io/kubernetes`,
`10.244.0.0/24`), run-time folders that .gitignore lists (`.cluster/pki/ca.crt`), fenced code
blocks (commands and sketches), and the few words of NOT_PATHS.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.paths import ROOT

DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])

# Inline code that looks like a path and is none: words of other systems.
NOT_PATHS = frozenset(
    {
        "auth/jwt",  # SLURM's authentication plugin
        "proctrack/linuxproc",  # SLURM's process tracking plugin
        "task/none",  # SLURM's task plugin
        "select/cons_tres",  # SLURM's node selection plugin
    }
)

# Endings of the repository's own files (not .sum, .mod or .go alone: `df.sum` is Python).
EXTENSIONS = (
    ".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt", ".in", ".tpl", ".mjs", ".js",
    ".sh", ".ipynb", ".png", ".c", ".pem",
)  # fmt: skip

FENCE = re.compile(r"^\s*(```|~~~)")
CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HOST = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")  # k8s.io, nvidia.com, 10.244.0.0


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield number, line


def ignored_roots() -> set[str]:
    """The top-level names that .gitignore lists: run-time state (.cluster/, .venv/, ...)."""
    names = set()
    for line in (ROOT / ".gitignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!", "*")):
            names.add(line.strip("/"))
    return names


def is_path(text: str) -> bool:
    """Whether inline code `text` names a repository path."""
    if not text or any(ch.isspace() for ch in text) or text in NOT_PATHS:
        return False
    if any(ch in text for ch in "<>*{}$:?!=,()[]|'\"@") or text.startswith(("/", "~", "-")):
        return False
    if "/" not in text and not text.endswith(EXTENSIONS):
        return False
    first = text.split("/", 1)[0]
    if "/" in text and HOST.match(first) and not first.endswith(EXTENSIONS):
        return False  # a host or a Go module path, a CIDR
    return first not in ignored_roots()


@functools.cache
def tracked_names() -> frozenset[str]:
    """Every file and folder name in the repository, for bare names (`values.schema.json`,
    `crds/`), which the docs use where the folder is clear from the sentence. Run-time folders
    (.gitignore's) are not walked."""
    skip = {".git", *ignored_roots()}
    names = set()
    for _, folders, files in os.walk(ROOT):
        folders[:] = [name for name in folders if name not in skip]
        names.update(folders, files)
    return frozenset(names)


def exists(base: Path, path: str, names: frozenset[str]) -> bool:
    if "/" not in path.rstrip("/") and base == ROOT:
        return (ROOT / path).exists() or path.rstrip("/") in names
    return (base / path).exists()


def defines(file: Path, name: str) -> bool:
    return bool(re.search(rf"^\s*(async\s+)?(def|class)\s+{re.escape(name)}\b", file.read_text(),
                          re.MULTILINE))  # fmt: skip


def missing_paths(text: str, folder: Path, label: str, names: frozenset[str]) -> list[str]:
    """`label:line: path` for each path that text names and that does not exist; its links are
    relative to folder."""
    missing = []
    for number, line in prose_lines(text):
        for match in CODE.finditer(line):
            code = match.group(2).strip()
            path, _, name = code.partition("::")
            if not is_path(path):
                continue
            if not exists(ROOT, path, names):
                missing.append(f"{label}:{number}: `{code}`")
            elif name and not ((ROOT / path).is_file() and defines(ROOT / path, name)):
                missing.append(f"{label}:{number}: `{code}` ({name} is not in {path})")
        for match in LINK.finditer(CODE.sub("", line)):
            target = match.group(1).split("#", 1)[0].split("?", 1)[0]
            if not target or "://" in target or target.startswith(("mailto:", "/")):
                continue  # a URL, or an anchor of the same page
            resolved = (folder / target).resolve()
            if not resolved.is_relative_to(ROOT):
                missing.append(f"{label}:{number}: ({target}) is outside the repository")
                continue
            if resolved.exists():
                continue
            missing.append(f"{label}:{number}: ({target})")
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_path_the_doc_names_exists(doc: Path) -> None:
    label = str(doc.relative_to(ROOT))
    missing = missing_paths(doc.read_text(), doc.parent, label, tracked_names())
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_the_check_names_a_path_that_does_not_exist() -> None:
    """The check itself: a wrong path, inline, as a link or as a test's name, is named; the
    rest is not."""
    text = (
        "`charts/facility/templates/edgy/` and [gone](no-such-page.md); fine: `ci/up`,\n"
        "[workers](workers.md), [up](../ci/up), `tls://a.b:443`, `/etc/facility/tls`, `<id>-tls`,\n"
        "`k8s.io/kubernetes`, `10.244.0.0/24`, `.cluster/pki/ca.crt`, `make test`, `auth/jwt`,\n"
        "`values.schema.json`, `harness/oidc.py`, [ref](values.md#auth), [x](../../shared/x.md),\n"
        "`tests/unit/test_docs.py::test_the_check_names_a_path_that_does_not_exist`,\n"
        "```\n`not/checked/in/a/fence`\n```\n"
        "`tests/unit/test_docs.py::test_nothing`\n"
    )
    missing = missing_paths(text, ROOT / "docs", "fake.md", tracked_names())
    assert missing == [
        "fake.md:1: `charts/facility/templates/edgy/`",
        "fake.md:1: (no-such-page.md)",
        "fake.md:4: (../../shared/x.md) is outside the repository",
        "fake.md:9: `tests/unit/test_docs.py::test_nothing` (test_nothing is not in "
        "tests/unit/test_docs.py)",
    ]
