# %% [markdown]
# # ttbar, the Analysis Grand Challenge way, on the facility
#
# A top-quark pair analysis shaped like the IRIS-HEP Analysis Grand Challenge's (AGC): events
# with exactly one lepton and at least four jets, of which at least one is b-tagged. Two
# regions are filled: with exactly one b jet, the scalar sum of the jets' transverse momenta
# (H_T); with two or more, the mass of the three-jet system of largest p_T that holds a b jet
# (the hadronically decaying top quark). A jet-energy-scale variation (+/- 3%) is filled beside
# the nominal histograms.
#
# The data are the facility's sample files (NanoAOD-like, made by `harness/agc_data.py`), read
# through the facility's XCache with your own token; the work runs on a Dask cluster of the
# facility (`FacilityCluster`), whose workers the operator starts for you. Nothing here needs
# editing: where the data and the cache are comes from the notebook's environment.
#
# Also a script: `python ttbar.py` (with `--local DIR` to read a copy of the files on disk in
# this one process, with no cluster).

# %%
from __future__ import annotations

import json
import os
import time
from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor
from coffea.nanoevents import NanoAODSchema

NanoAODSchema.warn_missing_crossrefs = False  # the sample files carry no cross-references

# The integrated luminosity the samples are scaled to (pb^-1), as in the AGC.
LUMINOSITY = 3378.0
VARIATIONS = ("nominal", "jes_up", "jes_down")
JES = {"nominal": 1.0, "jes_up": 1.03, "jes_down": 0.97}
B_TAG = 0.5  # btagCSVV2 working point

# %% [markdown]
# ## The data set
#
# `$FACILITY_DATASETS` is the path of the data set's listing on the facility's storage, and
# `$FACILITY_XCACHE` the address of the cache: every file is read as
# `root://<cache>//store/...`, so the first read fetches it from the origin and later ones are
# served from the cache.


# %%
def read_listing(server: str, path: str) -> dict[str, Any]:
    """The data set's listing: sample -> files, number of events, cross-section."""
    if server.startswith("root://"):
        import fsspec

        with fsspec.open(f"{server}/{path}", "rt") as listing:
            return json.load(listing)
    with open(os.path.join(server, path.lstrip("/"))) as listing:
        return json.load(listing)


def fileset(server: str, listing: dict[str, Any]) -> dict[str, Any]:
    """coffea's fileset: each sample's files as `server` serves them, and its weight per event."""
    return {
        sample: {
            "files": {f"{server}/{path}": "Events" for path in entry["files"]},
            "metadata": {"process": sample, "weight": entry["xsec"] * LUMINOSITY / entry["nevts"]},
        }
        for sample, entry in listing.items()
    }


# %% [markdown]
# ## The analysis
#
# A coffea processor: it gets one chunk of events at a time (a range of entries of one file,
# as NanoEvents), selects, and fills the histograms; coffea adds up the chunks' histograms.


# %%
class TtbarAnalysis(processor.ProcessorABC):
    def histogram(self) -> hist.Hist:
        return (
            hist.Hist.new.Reg(25, 50, 550, name="observable", label="observable [GeV]")
            .StrCat(["4j1b", "4j2b"], name="region", label="region")
            .StrCat([], name="process", label="process", growth=True)
            .StrCat(list(VARIATIONS), name="variation", label="variation")
            .Weight()
        )

    def process(self, events: Any) -> dict[str, Any]:
        output = self.histogram()
        process = events.metadata["process"]
        weight = events.metadata["weight"] * np.sign(events.genWeight)

        electrons = events.Electron[
            (events.Electron.pt > 30)
            & (abs(events.Electron.eta) < 2.1)
            & (events.Electron.cutBased == 4)
            & (events.Electron.sip3d < 4)
        ]
        muons = events.Muon[
            (events.Muon.pt > 30)
            & (abs(events.Muon.eta) < 2.1)
            & events.Muon.tightId
            & (events.Muon.sip3d < 4)
            & (events.Muon.pfRelIso04_all < 0.15)
        ]
        one_lepton = (ak.num(electrons) + ak.num(muons)) == 1

        for variation in VARIATIONS:
            jets = events.Jet
            jets = ak.with_field(jets, jets.pt * JES[variation], "pt")
            jets = jets[(jets.pt > 30) & (abs(jets.eta) < 2.4) & (jets.jetId >= 2)]
            b_tagged = jets.btagCSVV2 >= B_TAG
            n_b = ak.sum(b_tagged, axis=1)
            four_jets = one_lepton & (ak.num(jets) >= 4)

            # 4j1b: H_T of the jets.
            region = four_jets & (n_b == 1)
            output.fill(
                observable=ak.sum(jets.pt[region], axis=1),
                region="4j1b",
                process=process,
                variation=variation,
                weight=weight[region],
            )

            # 4j2b: the mass of the trijet of largest p_T with at least one b jet.
            region = four_jets & (n_b >= 2)
            selected = jets[region]
            trijets = ak.combinations(selected, 3, fields=["j1", "j2", "j3"])
            system = trijets.j1 + trijets.j2 + trijets.j3
            tags = ak.combinations(selected.btagCSVV2 >= B_TAG, 3, fields=["j1", "j2", "j3"])
            with_b = tags.j1 | tags.j2 | tags.j3
            system = system[with_b]
            leading = ak.argmax(system.pt, axis=1, keepdims=True)
            mass = ak.flatten(system[leading].mass)
            output.fill(
                observable=mass,
                region="4j2b",
                process=process,
                variation=variation,
                weight=weight[region],
            )
        return {"histogram": output, "events": {process: len(events)}}

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator


# %% [markdown]
# ## Where it runs
#
# `run` hands the fileset to coffea's `Runner`: with a Dask client, every chunk is processed
# on the cluster's workers (which read the files through the cache themselves); without one,
# here, in this process.


# %%
def run(files: dict[str, Any], client: Any = None, chunksize: int = 100_000) -> dict[str, Any]:
    if client is None:
        executor: Any = processor.IterativeExecutor()
    else:
        executor = processor.DaskExecutor(client=client, status=False)
    runner = processor.Runner(
        executor=executor, schema=NanoAODSchema, chunksize=chunksize, savemetrics=True
    )
    output, metrics = runner(files, processor_instance=TtbarAnalysis(), treename="Events")
    return {**output, "metrics": metrics}


def summary(histogram: hist.Hist) -> dict[str, Any]:
    """Each region's, process' and variation's bin contents (sum of weights), as plain lists."""
    return {
        region: {
            process: {
                variation: histogram[:, region, process, variation].values().tolist()
                for variation in VARIATIONS
            }
            for process in histogram.axes["process"]
        }
        for region in histogram.axes["region"]
    }


def plot(histogram: hist.Hist, path: str | None = None) -> Any:
    """The two regions, stacked by process (nominal), as the AGC shows them."""
    import matplotlib

    if path:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = {"4j1b": "$H_T$ [GeV] (4 jets, 1 b)", "4j2b": "$m_{bjj}$ [GeV] (4 jets, >= 2 b)"}
    # The same order in every run (the workers' results arrive in any order): signal on top.
    processes = sorted(histogram.axes["process"], key=lambda name: (name == "ttbar", name))
    for axis, region in zip(axes, ("4j1b", "4j2b"), strict=True):
        parts = [histogram[:, region, process, "nominal"] for process in processes]
        mplhep.histplot(parts, ax=axis, stack=True, histtype="fill", label=processes,
                        edgecolor="grey", linewidth=1)  # fmt: skip
        axis.set_xlabel(labels[region])
        axis.set_ylabel("events")
        axis.legend(fontsize=8)
    figure.tight_layout()
    if path:
        figure.savefig(path, dpi=100)
    return figure


# %% [markdown]
# ## Run it
#
# On the facility: a Dask cluster of your own (`FacilityCluster()`: its workers start as jobs
# of the facility, reach their scheduler through the edge and read with your token), scaled
# to a few workers. Its dashboard link shows the work as it goes. Only the workers read data:
# they also find the cache and the data set's listing, so the same code runs from outside the
# facility (a laptop, with `FacilityCluster(api_url=..., api_token=..., edge_host=...)`).


# %%
def where_the_data_are(datasets: str) -> tuple[str, dict[str, Any]]:
    """On a worker: the cache it reads through, and the data set's listing read through it."""
    server = os.environ["FACILITY_XCACHE"]
    return server, read_listing(server, datasets)


def on_the_facility(workers: int = 2, datasets: str = "", **cluster: Any) -> dict[str, Any]:
    from facility_client.cluster import FacilityCluster

    datasets = datasets or os.environ["FACILITY_DATASETS"]
    with FacilityCluster(cores=1, memory="2Gi", **cluster) as dask, dask.get_client() as client:
        print("dashboard:", dask.dashboard_link)
        dask.scale(workers)
        client.wait_for_workers(1, timeout=300)
        began = time.monotonic()
        server, listing = client.submit(where_the_data_are, datasets).result()
        result = run(fileset(server, listing), client)
        result["seconds"] = time.monotonic() - began
    return result


# %% [notebook]
if __name__ == "__main__" and "get_ipython" in globals():  # in the notebook, this cell as is
    result = on_the_facility()
    histogram = result["histogram"]
    events = sum(result["events"].values())
    print(f"{events:,} events in {result['seconds']:.1f} s")
    with open("ttbar-histograms.json", "w") as out:  # the bin contents, for a comparison
        json.dump(summary(histogram), out)
    figure = plot(histogram)


# %% [script]
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="The AGC-style ttbar analysis")
    parser.add_argument("--local", metavar="DIR", help="read the files from DIR, in-process")
    parser.add_argument("--datasets", default=os.environ.get("FACILITY_DATASETS"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default="ttbar-histograms.json", help="bin contents to here")
    parser.add_argument("--plot", default="ttbar.png")
    # From outside the facility (its JupyterHub token in $JUPYTERHUB_API_TOKEN):
    parser.add_argument("--api-url", help="the facility's Dask API: https://<hub>/services/dask")
    parser.add_argument("--edge-host", help="the edge, host or host:port, if DNS lacks the names")
    args = parser.parse_args(argv)
    began = time.monotonic()
    if args.local:
        result = run(fileset(args.local, read_listing(args.local, args.datasets)))
    else:
        where = {"api_url": args.api_url, "edge_host": args.edge_host}
        options = {key: value for key, value in where.items() if value}
        result = on_the_facility(args.workers, args.datasets, **options)
    with open(args.json, "w") as out:
        json.dump(summary(result["histogram"]), out)
    plot(result["histogram"], args.plot)
    events = sum(result["events"].values())
    print(f"{events:,} events in {time.monotonic() - began:.1f} s: {args.json}, {args.plot}")
    return 0


if __name__ == "__main__" and "get_ipython" not in globals():
    raise SystemExit(main())
