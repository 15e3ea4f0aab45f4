"""The facility's sample data: NanoAOD-like ROOT files shaped for the IRIS-HEP Analysis Grand
Challenge ttbar analysis (examples/agc), written with uproot, reproducibly (one seed per file).

Each sample (ttbar signal, single top in three channels, W+jets) is a few files holding one
TTree "Events" with the branches that analysis reads under NanoAOD's names: jets with a b-tag
score, electrons and muons with their identification and isolation, MET, the generator weight,
and the counters (nJet, ...). The physics is invented but shaped like the real thing: ttbar
events have more jets and two b jets, W+jets few jets and rarely a b, so that the analysis'
selection and its histograms mean something.

Layout under the output folder (served by the origin as root://<origin>/store/agc/<set>/...):

    store/agc/<set>/<sample>/<sample>_<n>.root
    store/agc/<set>/datasets.json     {"<sample>": {"files": [...], "nevts": N, "xsec": pb}}

`datasets.json` lists paths relative to the origin's root (/store/...): a reader prefixes the
server it reads through (XCache, or the origin itself).

    python -m harness.agc_data --out DIR [--set small|full]

writes the set once: a folder whose `complete` file matches this generator's version is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

# Bump when the files this module writes change: a cached set of another version is rewritten.
VERSION = 1
TREE = "Events"
STORE = "store/agc"


@dataclass(frozen=True)
class Sample:
    name: str
    xsec: float  # pb
    jets: float  # mean number of jets
    b_jets: int  # true b jets per event (before acceptance)
    leptons: float  # mean number of prompt leptons


SAMPLES = (
    Sample("ttbar", 396.87, 6.5, 2, 1.0),
    Sample("single_top_s_chan", 3.29, 3.5, 2, 1.0),
    Sample("single_top_t_chan", 217.0, 3.5, 1, 1.0),
    Sample("single_top_tW", 37.9, 4.5, 1, 1.3),
    Sample("wjets", 61457.0 * 0.252, 2.3, 0, 1.0),
)


@dataclass(frozen=True)
class DataSet:
    files_per_sample: dict[str, int]
    events_per_file: int


# full: 1.3 GB (8.8 million events), for make up's facility and bench/agc; small: 54 MB (400,000
# events), for the tests.
SETS = {
    "full": DataSet({"ttbar": 10, "wjets": 6}, 400_000),
    "small": DataSet({"ttbar": 2}, 40_000),
}


def _files(dataset: DataSet, sample: Sample) -> int:
    return dataset.files_per_sample.get(sample.name, 2)


def _jagged(counts: np.ndarray, values: dict[str, np.ndarray]) -> ak.Array:
    return ak.zip({name: ak.unflatten(column, counts) for name, column in values.items()})


def events(sample: Sample, n: int, seed: int) -> dict[str, Any]:
    """n events of one sample, as uproot writes them (jagged collections become counter and
    branches: Jet -> nJet, Jet_pt, ...)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    n_jet = rng.poisson(sample.jets, n)
    total = int(n_jet.sum())
    # The b jets are among the leading ones: the first `b_jets` of each event, when present.
    index = np.arange(total) - np.repeat(np.cumsum(n_jet) - n_jet, n_jet)
    is_b = index < sample.b_jets
    jet_pt = np.where(is_b, rng.gamma(3.0, 22.0, total), rng.exponential(35.0, total)) + 20.0
    # Leading jets first, as NanoAOD orders them.
    jet_pt = ak.flatten(ak.sort(ak.unflatten(jet_pt, n_jet), ascending=False)).to_numpy()
    b_score = np.clip(np.where(is_b, rng.beta(5.0, 1.5, total), rng.beta(1.0, 6.0, total)), 0, 1)
    jets = _jagged(
        n_jet,
        {
            "pt": jet_pt.astype(f32),
            "eta": rng.normal(0.0, 1.4, total).clip(-4.7, 4.7).astype(f32),
            "phi": rng.uniform(-np.pi, np.pi, total).astype(f32),
            "mass": (jet_pt * rng.uniform(0.05, 0.2, total)).astype(f32),
            "btagCSVV2": b_score.astype(f32),
            "jetId": rng.choice(np.array([0, 2, 6], dtype=np.int32), total, p=[0.02, 0.08, 0.9]),
        },
    )

    def leptons(mean: float, kind: str) -> ak.Array:
        counts = rng.poisson(mean, n)
        size = int(counts.sum())
        pt = rng.gamma(2.5, 18.0, size) + 10.0
        fields = {
            "pt": pt.astype(f32),
            "eta": rng.normal(0.0, 1.1, size).clip(-2.5, 2.5).astype(f32),
            "phi": rng.uniform(-np.pi, np.pi, size).astype(f32),
            "mass": np.full(size, 0.000511 if kind == "e" else 0.1057, f32),
            "charge": rng.choice(np.array([-1, 1], dtype=np.int32), size),
            "sip3d": rng.exponential(1.5, size).astype(f32),
        }
        if kind == "e":
            fields["cutBased"] = rng.choice(
                np.arange(5, dtype=np.int32), size, p=[0.1, 0.1, 0.15, 0.2, 0.45]
            )
        else:
            fields["tightId"] = rng.uniform(0, 1, size) < 0.8
            fields["pfRelIso04_all"] = rng.exponential(0.08, size).astype(f32)
        return _jagged(counts, fields)

    # A prompt lepton is an electron or a muon, half and half; fakes add a few of each.
    return {
        "run": np.full(n, 1, dtype=np.uint32),
        "luminosityBlock": (np.arange(n) // 1000 + 1).astype(np.uint32),
        "event": np.arange(seed * 10_000_000, seed * 10_000_000 + n, dtype=np.uint64),
        "genWeight": np.where(rng.uniform(0, 1, n) < 0.03, -1.0, 1.0).astype(f32),
        "MET_pt": rng.gamma(2.0, 20.0, n).astype(f32),
        "MET_phi": rng.uniform(-np.pi, np.pi, n).astype(f32),
        "Electron": leptons(sample.leptons * 0.5 + 0.15, "e"),
        "Muon": leptons(sample.leptons * 0.5 + 0.15, "mu"),
        "Jet": jets,
    }


def write_file(path: Path, sample: Sample, n_events: int, seed: int, basket: int = 50_000) -> None:
    """One file (parents made), readable by everyone: the origin may run as its own user. Each
    branch is written in baskets of `basket` events, as NanoAOD's are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with uproot.recreate(partial) as out:
        tree = None
        for start in range(0, n_events, basket):
            chunk = events(sample, min(basket, n_events - start), seed * 1000 + start // basket)
            if tree is None:
                tree = out.mktree(TREE, chunk)  # its branches, and this first basket
            else:
                tree.extend(chunk)
    partial.chmod(0o644)
    partial.rename(path)


def seed_of(sample: Sample, number: int) -> int:
    return 1 + SAMPLES.index(sample) * 100 + number


def write_set(out: Path, name: str, progress: bool = True) -> Path:
    """The data set `name` under out/store/agc/<name>; returns its datasets.json. Kept when it
    was written by this version of the generator."""
    dataset = SETS[name]
    folder = out / STORE / name
    complete = folder / "complete"
    if complete.is_file() and complete.read_text().strip() == str(VERSION):
        return folder / "datasets.json"
    began = time.monotonic()
    listing: dict[str, Any] = {}
    for sample in SAMPLES:
        files = []
        for number in range(_files(dataset, sample)):
            path = folder / sample.name / f"{sample.name}_{number}.root"
            if progress:
                print(f"[agc-data] {name}: {path.relative_to(out)}", file=sys.stderr, flush=True)
            write_file(path, sample, dataset.events_per_file, seed_of(sample, number))
            files.append(f"/{path.relative_to(out)}")
        listing[sample.name] = {
            "files": files,
            "nevts": dataset.events_per_file * len(files),
            "xsec": sample.xsec,
        }
    (folder / "datasets.json").write_text(json.dumps(listing, indent=1) + "\n")
    (folder / "datasets.json").chmod(0o644)
    complete.write_text(f"{VERSION}\n")
    if progress:
        size = sum(p.stat().st_size for p in folder.rglob("*.root")) / 1e6
        took = time.monotonic() - began
        print(f"[agc-data] {name}: {size:.0f} MB in {took:.0f}s", file=sys.stderr, flush=True)
    return folder / "datasets.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the origin's root folder")
    parser.add_argument("--set", choices=sorted(SETS), default="full")
    args = parser.parse_args(argv)
    print(write_set(args.out, args.set))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
