"""The example analysis (examples/agc) and its sample data (harness.agc_data), here in one
process: the notebook is its script, the data are reproducible, the analysis selects what it
says it does. tests/e2e runs the same notebook on the facility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from harness import agc_data, notebooks
from harness.examples import agc_analysis
from harness.paths import ROOT

EXAMPLE = ROOT / "examples" / "agc" / "ttbar.py"


def test_the_notebook_is_its_script() -> None:
    """The committed notebook is what harness.notebooks makes of the script (run it after an
    edit), and every code cell of it compiles."""
    made = notebooks.notebook(EXAMPLE.read_text())
    assert EXAMPLE.with_suffix(".ipynb").read_text() == made, "python -m harness.notebooks"
    cells = json.loads(made)["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    for number, source in enumerate(code):
        compile(source, f"cell {number}", "exec")
    # The script's command line is not in the notebook; the notebook's run cell is unguarded.
    assert not any("def main(" in source for source in code)
    assert code[-1].startswith("result = on_the_facility()")


def test_a_notebook_cell_kind_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"unknown cell kind '\[raw\]'"):
        notebooks.cells("# %% [raw]\nx = 1\n")
    with pytest.raises(ValueError, match=r"starts with its guard"):
        notebooks.cells("# %% [notebook]\nx = 1\n")


def test_the_sample_data_are_reproducible_and_shaped_by_process() -> None:
    ttbar, wjets = agc_data.SAMPLES[0], agc_data.SAMPLES[-1]
    first, again = agc_data.events(ttbar, 2000, seed=7), agc_data.events(ttbar, 2000, seed=7)
    for name in first:
        assert ak.all(ak.flatten(first[name], axis=None) == ak.flatten(again[name], axis=None))
    other = agc_data.events(ttbar, 2000, seed=8)
    assert not ak.all(first["MET_pt"] == other["MET_pt"])
    w = agc_data.events(wjets, 2000, seed=7)
    assert ak.mean(ak.num(first["Jet"])) > 2 * ak.mean(ak.num(w["Jet"]))

    def b_tagged(sample: dict[str, Any]) -> float:
        return float(ak.mean(ak.sum(sample["Jet"].btagCSVV2 >= 0.5, axis=1)))

    assert b_tagged(first) > 1.5 > 0.5 > b_tagged(w)
    # Leading jets first, as NanoAOD orders them.
    pt = first["Jet"].pt
    assert ak.all(pt[:, :-1] >= pt[:, 1:])


def test_the_analysis_selects_and_fills_its_regions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny data set written by the generator, read back by uproot (NanoAOD's branch names),
    analysed in-process: both regions filled for every process, the jet energy scale up moves
    H_T up, and the script writes its JSON and plot."""
    monkeypatch.setitem(agc_data.SETS, "tiny", agc_data.DataSet({}, 3000))
    listing_path = agc_data.write_set(tmp_path, "tiny", progress=False)
    listing = json.loads(listing_path.read_text())
    assert set(listing) == {s.name for s in agc_data.SAMPLES}
    first = tmp_path / listing["ttbar"]["files"][0].lstrip("/")
    with uproot.open(first) as file:
        tree = file[agc_data.TREE]
        assert tree.num_entries == 3000
        assert {"nJet", "Jet_btagCSVV2", "Muon_tightId", "Electron_cutBased"} <= set(tree.keys())

    ttbar = agc_analysis()
    datasets = "/store/agc/tiny/datasets.json"
    result = ttbar.run(ttbar.fileset(str(tmp_path), ttbar.read_listing(str(tmp_path), datasets)))
    assert sum(result["events"].values()) == 3000 * 2 * len(agc_data.SAMPLES)
    histogram = result["histogram"]
    for region in ("4j1b", "4j2b"):
        assert histogram[:, region, "ttbar", "nominal"].values().sum() > 0, region
    centres = histogram.axes["observable"].centers

    def mean_ht(variation: str) -> float:
        values = histogram[:, "4j1b", "ttbar", variation].values()
        return float(np.average(centres, weights=values))

    assert mean_ht("jes_up") > mean_ht("nominal") > mean_ht("jes_down")

    monkeypatch.chdir(tmp_path)
    assert ttbar.main(["--local", str(tmp_path), "--datasets", datasets]) == 0
    summary = json.loads((tmp_path / "ttbar-histograms.json").read_text())
    assert (
        summary["4j1b"]["ttbar"]["nominal"]
        == histogram[:, "4j1b", "ttbar", "nominal"].values().tolist()
    )
    assert (tmp_path / "ttbar.png").stat().st_size > 10_000
