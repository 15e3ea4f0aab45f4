"""NanoAOD-like ROOT files for the XCache tests and benchmark, written with uproot, and digests
that say whether two reads of a file gave the same data.

A file holds one TTree, "Events", with NanoAOD's shape: event identifiers, flat per-event
quantities (MET_*), and jagged collections (Muon_*, Electron_*, Jet_*) with their counters
(nMuon, ...). The values are random but reproducible (seeded).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

TREE = "Events"


def _collection(rng: np.random.Generator, counts: np.ndarray, fields: dict[str, str]) -> ak.Array:
    total = int(counts.sum())
    columns: dict[str, np.ndarray] = {}
    for name, kind in fields.items():
        if kind == "pt":
            values = (rng.exponential(25.0, total) + 5.0).astype(np.float32)
        elif kind == "eta":
            values = rng.uniform(-2.5, 2.5, total).astype(np.float32)
        elif kind == "phi":
            values = rng.uniform(-np.pi, np.pi, total).astype(np.float32)
        elif kind == "mass":
            values = np.abs(rng.normal(5.0, 2.0, total)).astype(np.float32)
        elif kind == "score":
            values = rng.uniform(0.0, 1.0, total).astype(np.float32)
        elif kind == "charge":
            values = rng.choice(np.array([-1, 1], dtype=np.int32), total)
        elif kind == "id":
            values = rng.integers(0, 7, total, dtype=np.int32)
        else:
            values = rng.uniform(0.0, 1.0, total) > 0.5
        columns[name] = ak.unflatten(values, counts)
    return ak.zip(columns)


def events(n: int, seed: int) -> dict[str, Any]:
    """n events of NanoAOD-shaped branches, as uproot writes them."""
    rng = np.random.default_rng(seed)
    n_muon = rng.poisson(1.3, n)
    n_electron = rng.poisson(0.9, n)
    n_jet = rng.poisson(4.5, n)
    lepton = {
        "pt": "pt",
        "eta": "eta",
        "phi": "phi",
        "mass": "mass",
        "charge": "charge",
        "pfRelIso03_all": "score",
        "tightId": "flag",
    }
    return {
        "run": np.full(n, 1 + seed, dtype=np.uint32),
        "luminosityBlock": (np.arange(n) // 1000 + 1).astype(np.uint32),
        "event": np.arange(seed * 10_000_000, seed * 10_000_000 + n, dtype=np.uint64),
        "MET_pt": rng.exponential(40.0, n).astype(np.float32),
        "MET_phi": rng.uniform(-np.pi, np.pi, n).astype(np.float32),
        "Muon": _collection(rng, n_muon, lepton),
        "Electron": _collection(rng, n_electron, lepton),
        "Jet": _collection(
            rng,
            n_jet,
            {
                "pt": "pt",
                "eta": "eta",
                "phi": "phi",
                "mass": "mass",
                "btagDeepFlavB": "score",
                "jetId": "id",
            },
        ),
    }


def write_nanoaod(path: Path, n_events: int, seed: int, basket: int = 10_000) -> Path:
    """A NanoAOD-like file at path (parents made), readable by everyone (the origin runs as its
    own user). Each branch is written in baskets of `basket` events, as NanoAOD's are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = events(n_events, seed)
    chunks = [{k: v[i : i + basket] for k, v in data.items()} for i in range(0, n_events, basket)]
    with uproot.recreate(path) as out:
        tree = out.mktree(TREE, chunks[0])  # counters nMuon, ... and fields Muon_pt, ...
        for chunk in chunks[1:]:
            tree.extend(chunk)
    path.chmod(0o644)
    return path


def arrays_digest(tree: Any) -> dict[str, Any]:
    """What uproot reads from an Events tree: every branch, as one digest, and the entries."""
    arrays = tree.arrays(library="ak")
    form, length, buffers = ak.to_buffers(ak.to_packed(arrays))
    digest = hashlib.sha256(json.dumps(form.to_dict(), sort_keys=True).encode())
    for key in sorted(buffers):
        digest.update(key.encode())
        digest.update(np.asarray(buffers[key]).tobytes())
    return {"entries": int(length), "sha256": digest.hexdigest()}


def local_digests(path: Path) -> dict[str, Any]:
    """The digests of a file on local disk, to compare reads through XCache with."""
    with uproot.open(path) as file:
        arrays = arrays_digest(file[TREE])
    return {"bytes": hashlib.sha256(path.read_bytes()).hexdigest(), "arrays": arrays}
