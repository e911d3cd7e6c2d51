"""The tests preset end to end through Snakemake, then incremental reruns from its own plan."""

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import numpy as np
import pandas as pd
import tifffile

from polarmap import io
from polarmap.tables import SYNTHETIC_TEST, read_table
from polarmap.models import ENCODER_LABELS, OBJECTIVE_LABELS
from test_preprocessing import disc

ROOT = Path(__file__).resolve().parents[1]
# the tables' last columns: column fitting on the known supercell, then on the lattice found
COLUMN_FIT_COLUMNS = "Columns (ADF) | Columns (iDPC) | Columns (ADF, lattice found) | Columns (iDPC, lattice found) |"


def snakemake(workdir, *args):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--workflow-profile", str(ROOT / "workflow/profiles/default"), "--cores", "2", *args],
        capture_output=True, text=True, cwd=workdir,
    )


def run_study(workdir):
    """The tests preset plus one "microscope" acquisition declared as an experimental set."""
    shutil.copy(ROOT / "config.yaml", workdir)
    config = (ROOT / "workflow/presets/tests.yaml").read_text()
    config = config.replace("  reference:", "  experimental:\n    5E: {path: scan.tif, format: tiff_stack, scan_shape: [4, 4], accepted: [RM, RD], "
                            "detector_mrad_per_px: 3.1478876558706337, energy_kev: 200, semiangle_mrad: 24, scan_rotation_deg: 0, scan_flip: false}\n"
                            "  reference:")
    (workdir / "tests.yaml").write_text(config)
    discs = [disc(48, centre=(25 + 0.3 * (i % 4), 22 - 0.2 * (i // 4)), radius=7.6) * 500 + 3 for i in range(16)]  # 24 mrad
    tifffile.imwrite(workdir / "scan.tif", np.stack(discs).astype(np.uint16))
    result = snakemake(workdir, "--configfile", "tests.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("study"))


# One job of each kind after the simulations, rerun in the determinism test: preprocessing of a
# simulated, an experiment-like and an imported set, the experiment-like and import jobs, the
# splits, a model of each encoder, objective, augmentation and training regime, every PCA+kNN,
# the unit-cell model, virtual images, and predictions of each predictor kind.
RERUN = ["datasets/1E.h5", "datasets/5E.h5", "preprocessed/3S.h5", "preprocessed/1E.h5", "preprocessed/5E.h5",
         "splits/base/augmentation_seed888.npz", "splits/diverse/augmentation_filter_seed888.npz", "virtual/3S.npz",
         *[f"models/{model}/model.pt" for model in (
             "conv-classification-augmentation-scratch-seed888", "conv-prototype-none-scratch-seed888",
             "conv-regression-augmentation_filter-scratch-seed888", "resnet50-classification-none-scratch-seed888",
             "conv-classification-augmentation_filter-scratch-diverse-domain_randomisation-seed888", "unit_cell-seed888")],
         *[f"models/pca_knn-{configuration}-seed888/model.npz" for configuration in ("none", "augmentation", "augmentation_filter")],
         *[f"predictions/{predictor}.npz" for predictor in (
             "conv-classification-augmentation-scratch-seed888", "conv-regression-augmentation_filter-scratch-seed888",
             "pca_knn-augmentation-seed888", "unit_cell-seed888", "column_fit_adf", "com")]]


def same_content(a: Path, b: Path) -> bool:
    """Equal data: HDF5 and .npz containers record times, so their arrays are compared (NaN, no
    answer, equal to NaN); anything else, model files included, byte for byte."""
    if a.suffix == ".h5":
        with io.open_dataset(a) as x, io.open_dataset(b) as y:
            return np.array_equal(x["patterns"][()], y["patterns"][()]) and np.array_equal(x["labels"][()], y["labels"][()])
    if a.suffix == ".npz":
        with np.load(a) as x, np.load(b) as y:
            return sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x.files)
    return a.read_bytes() == b.read_bytes()


def test_a_second_run_gives_identical_data_sets_models_predictions_and_tables(study, tmp_path):
    """Determinism: one job of each kind after the simulations (RERUN) run again, elsewhere, from
    the same simulated sets, and then the tables from every prediction, give the same data sets,
    out-of-distribution thresholds and predictions to the last bit, and byte-identical model
    files and tables. That a simulation repeats bit for bit is tested where it is cheaper
    (test_independence: two processes, one set)."""
    again = tmp_path / "again"
    shutil.copytree(study, again, symlinks=True)
    first, second = study / "results/tests", again / "results/tests"
    targets = [f"results/tests/{path}" for path in RERUN]
    rerun = snakemake(again, "--configfile", "tests.yaml", "--force", *targets)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # the tables again from every prediction, the others kept as they are (no rerun for their age)
    tables = snakemake(again, "results/tests/tables/results.tsv", "--force", "--configfile", "tests.yaml", "--rerun-triggers", "input", "params")
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert (second / "datasets/3S.h5").stat().st_mtime == (first / "datasets/3S.h5").stat().st_mtime
    made_again = [path for path in sorted(second.rglob("*")) if path.is_file() and (first / path.relative_to(second)).exists()
                  and path.stat().st_mtime > (first / path.relative_to(second)).stat().st_mtime]
    assert {str(path.relative_to(second)) for path in made_again} >= set(RERUN) | {"tables/results.tsv", "tables/table_none.md"}
    assert {path.parent.name for path in made_again if path.name == "ood.npz"} >= {"conv-classification-augmentation-scratch-seed888"}
    # (training curves and records hold times: not compared)
    compared = [path for path in made_again if path.suffix in (".h5", ".npz", ".pt") or path.parent.name == "tables" and path.suffix in (".md", ".csv", ".tsv", ".tex")]
    different = [str(path.relative_to(second)) for path in compared if not same_content(first / path.relative_to(second), path)]
    assert not different and len(compared) > 40, different


def test_every_data_set_is_made_valid_and_logged(study):
    results = study / "results/tests"
    summary = (results / "datasets/summary.tsv").read_text().splitlines()
    # 8 training and 8 thicker ones, 7 tests and 2 of a thickness sweep, 4 experiment-like (1E,
    # 3E, 4E, dose_1000), their 3 clean sources, the experimental 5E, the defect set, the reference
    assert len(summary) == 1 + 8 + 8 + 7 + 2 + 4 + 3 + 1 + 1 + 1
    for h5 in (results / "datasets").glob("*.h5"):
        with io.open_dataset(h5, check_values=True) as f:
            assert f["patterns"].shape == (4, 4, 48, 48)
        with io.open_dataset(results / f"preprocessed/{h5.name}") as f:
            assert f["patterns"].shape == (4, 4, 32, 32) and f["keep"].shape == (4, 4)
        simulated = (results / f"qstem/{h5.stem}/{h5.stem}.qsc").exists()
        assert simulated == (results / f"benchmarks/simulate/{h5.stem}.tsv").exists()
    assert (results / "datasets/dose_1000.h5").exists() and not (results / "datasets/dose_1000_clean.h5").exists()
    with io.open_dataset(results / "preprocessed/5E.h5") as f:
        meta = io.read_attrs(f)
        assert meta["classes"] == ["RM", "RD"] and (f["labels"][()] == -1).all()
        # the discs' mean centre, as displayed (row 25.45, col 21.7), with +row up: 47 - 25.45
        assert meta["global_com_px"] == pytest.approx([47 - 25.45, 21.7], abs=0.02)
        assert meta["scan_orientation_from"] == "given" and meta["crop_mrad"] == pytest.approx(32 * 3.1478876558706337)
    (mapped,) = (results / "maps/5E").iterdir()  # by the first trained model (evaluation.map_models empty)
    assert (results / "models" / mapped.name / "model.pt").exists()
    assert {p.name for p in mapped.iterdir()} >= {"map.png", "map.pdf", "predictions.npz", "predictions.tsv", "provenance.json", "cells.csv"}
    # 4x4 positions hold no lattice of columns: no cells, and why, not a guess (the unit-cell
    # model's columns there for the cells it would have answered)
    assert (mapped / "cells.csv").read_text().count("\n") == 1 and "unit_cell_class,unit_cell_agree" in (mapped / "cells.csv").read_text()
    provenance = json.loads((mapped / "provenance.json").read_text())
    assert "not mapped" in provenance["cells"]
    # discs on a flat background, a 48 px detector (75 mrad): the PACBED's few rings fit a wide
    # range of the library's thicknesses, and the map says the thickness is poorly determined
    assert provenance["thickness"]["note"].startswith("poorly determined: every thickness from")
    assert provenance["thickness"]["library"]["thickness_nm"][1] >= 80 and (results / "benchmarks/pacbed_library.tsv").exists()
    counts = (results / "preprocessed/filter_counts.tsv").read_text().splitlines()
    assert counts[0].split() == ["class", "kept", "total", "fraction"] and len(counts) == 1 + 16 + 1
    assert sorted(str(p.relative_to(results / "splits")) for p in (results / "splits").glob("*/*.npz")) == [
        "base/augmentation_filter_seed888.npz", "base/augmentation_seed888.npz", "base/none_seed888.npz", "diverse/augmentation_filter_seed888.npz"]
    models = {p.name for p in (results / "models").iterdir()}
    assert len(models) == 9 + 2 + 3 + 3 + 1 and {"vgg16-classification-none-scratch-seed888", "unit_cell-seed888"} <= models
    for model in models:
        record = json.loads((results / "models" / model / "record.json").read_text())
        assert "synthetic_test_accuracy" in record
        assert (results / "models" / model / ("model.npz" if model.startswith("pca_knn") else "model.pt")).exists()
    results_table = read_table(results / "tables/results.tsv")
    assert set(results_table["predictor"]) == models | {"com", "column_fit_adf", "column_fit_idpc", "found_lattice_adf", "found_lattice_idpc"}
    evaluated = ["1S", "2S", "3S", "4S", "5S", "6S", "7S", "thickness_2", "thickness_8", "1E", "3E", "4E", "dose_1000", "5E", "defect"]
    assert sorted(set(results_table["dataset"])) == sorted(evaluated + [SYNTHETIC_TEST])
    table = (results / "tables/table_none.md").read_text().splitlines()
    assert table[0] == ("| Dataset | Conv (Reg) | Conv (Cls) | Conv (Proto) | VGG (Cls) | ResNet (Cls) | PCA | Unit cell (ADF+CoM) | CoM | "
                        f"{COLUMN_FIT_COLUMNS}")
    assert table[2].startswith(f"| {SYNTHETIC_TEST}") and any(line.startswith("| 1S-LU-4x4-") for line in table)
    for configuration in ("none", "augmentation", "augmentation_filter"):
        for suffix in ("md", "csv", "tex"):
            assert (results / f"tables/table_{configuration}.{suffix}").stat().st_size > 0
        for kind in ("distributions", "maps"):
            assert (results / f"figures/{kind}_{configuration}.pdf").exists()
            record = json.loads((results / f"figures/{kind}_{configuration}.record.json").read_text())
            assert record["inputs"] and record["git_commit"] is not None and record["settings"]["configuration"] == configuration
    assert (results / "figures/sweep_dose.png").exists() and (results / "figures/com_field.png").exists()
    assert (results / "figures/training_curves.pdf").exists()
    # at most 2 epochs of a patience of 5: every neural model was capped, and its table says so
    assert not any(json.loads((results / "models" / model / "record.json").read_text()).get("converged", True) for model in models if "-scratch-" in model)
    assert "‡ not converged" in (results / "tables/table_none.md").read_text()
    assert_audit_and_learning_marks(results, models, evaluated)
    assert_thickness_study(results)
    record = json.loads((results / "predictions/com.record.json").read_text())
    assert len(record["inputs"]) == len(evaluated) and "wall_seconds" in record
    assert_defect_study(results)
    assert_per_cell_and_unknown(results, models, evaluated)
    assert not list(results.rglob("*.partial")) and not list(results.rglob("*.tmp*")) and not list(results.rglob("checkpoint.pt"))


def assert_audit_and_learning_marks(results, models, evaluated):
    """Issue 14 on the tests preset (corrected): every evaluated set and clean source is its own
    crystal, independent of training, and carries no dagger. Its splits have no guard band (4x4
    scans of 1.6 nm cells, 2 A apart), so the audit finds near copies across some synthetic-test
    parts and the synthetic-test row carries the dagger exactly then. Each model that did not
    learn is "did not learn" in its table, never a number."""
    leakage = pd.read_csv(results / "tables/leakage.csv", keep_default_na=False, na_values=["nan"])
    audited = set(leakage["set"])
    assert set(evaluated) <= audited and {"1E_clean", "3E_clean", "4E_clean"} <= audited
    splits = leakage["set"].str.startswith("synthetic test")
    assert splits.sum() == 2 * 4  # 3 base splits and the diverse one, the models' and PCA+kNN's parts
    assert leakage.loc[~splits, "independent"].all() and (leakage["exact_copies"] == 0).all()
    tables = {c: (results / f"tables/table_{c}.md").read_text() for c in ("none", "augmentation", "augmentation_filter")}
    for text in tables.values():
        marked = {line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("|") and "†" in line.split(" | ")[0]}
        assert marked == ({f"{SYNTHETIC_TEST} †"} if not leakage.loc[splits, "independent"].all() else set()), marked
    for model in models - {m for m in models if "diverse" in m or "domain" in m}:
        record = json.loads((results / "models" / model / "record.json").read_text())
        assert isinstance(record["learned"], bool) and 0 <= record["validation_accuracy"] <= 1
        configuration = record["settings"].get("configuration", "none")  # the unit-cell model is in every table
        header, synthetic_row = tables[configuration].splitlines()[0].split(" | "), tables[configuration].splitlines()[2].split(" | ")
        assert synthetic_row[0].startswith(f"| {SYNTHETIC_TEST}")
        title = ("PCA" if model.startswith("pca_knn") else "Unit cell (ADF+CoM)" if model.startswith("unit_cell")
                 else f"{ENCODER_LABELS[model.split('-')[0]]} ({OBJECTIVE_LABELS[record['settings']['objective']]})")
        column = header.index(title)
        assert (synthetic_row[column].strip(" |*") == "did not learn") == (not record["learned"]), (model, synthetic_row[column])


def assert_per_cell_and_unknown(results, models, evaluated):
    """Issues 15 and 16 on the tests preset: virtual images of every simulated evaluated set and of
    the unit-cell model's training sets, column fitting "n/a" at 1-2 px per cell, a per-cell
    figure per set, table_cells, and an out-of-distribution calibration for every trained model."""
    lattice_sets = [name for name in evaluated if name != "5E"]  # 5E: a detector file, its cells unknown
    for name in lattice_sets + ["train_RM", "train_RM_thick", "5E"]:  # 5E is calibrated: its virtual images too
        with np.load(results / f"virtual/{name}.npz") as images:
            assert images["adf"].shape == (4, 4) and images["com_mrad"].shape == (4, 4, 2)
    for name in lattice_sets:
        assert (results / f"figures/cells/{name}.pdf").exists()
    fitted = json.loads((results / "predictions/column_fit_adf.json").read_text())
    assert {m["dataset"] for m in fitted} == set(lattice_sets) and all(m["cell_predictor"].startswith("not applicable") for m in fitted)
    cells = (results / "tables/table_cells.md").read_text().splitlines()
    assert cells[0].startswith("| Dataset (pattern / cell %) | Conv (Reg) [none] |") and cells[0].endswith(f"| CoM | {COLUMN_FIT_COLUMNS}")
    assert {line.split(" | ")[0].strip("| ").split("-")[0] for line in cells[2:] if line.startswith("|")} == set(lattice_sets)
    assert cells[-1].startswith("‡ not converged")  # the preset's models run 1-2 epochs of a patience of 5
    trained = {m for m in models if not m.startswith("unit_cell")}
    assert {p.parent.name for p in results.glob("models/*/ood.npz")} == trained
    for model in trained:
        with np.load(results / f"predictions/{model}.npz") as grids:
            assert {"3S.ood", "3S"} <= set(grids.files) and grids["3S"].min() >= -1
        metrics = json.loads((results / f"predictions/{model}.json").read_text())
        assert all(0 <= m["unknown_fraction"] <= 1 for m in metrics)


def assert_thickness_study(results):
    """Issue 9 on the tests preset: a model trained on two thicknesses, domain randomisation, their
    table and the thickness-sweep figure."""
    split = np.load(results / "splits/diverse/augmentation_filter_seed888.npz")
    assert len(split["datasets"]) == 16 and {"train_RM", "train_RM_thick"} <= set(split["datasets"].tolist())
    assert np.bincount(split["dataset_index"], minlength=16).min() > 0  # every set gives patterns
    record = json.loads((results / "models/conv-classification-augmentation_filter-scratch-diverse-seed888/record.json").read_text())
    assert record["settings"]["training_data"] == "diverse" and len(record["inputs"]) == 1 + 16
    regimes = (results / "tables/table_regimes.md").read_text().splitlines()
    assert regimes[0] == ("| Dataset | Conv (Cls) [augmentation_filter] | Conv (Cls, diverse data) [augmentation_filter] | "
                          "Conv (Cls, domain rand.) [augmentation_filter] | Conv (Cls, diverse data, domain rand.) [augmentation_filter] | CoM | "
                          f"{COLUMN_FIT_COLUMNS}")
    assert any(line.startswith("| thickness_8-RM-2x2-") for line in regimes)
    assert "diverse" not in (results / "tables/table_augmentation_filter.md").read_text()
    assert (results / "figures/com_and_accuracy_thickness.pdf").exists() and (results / "figures/sweep_thickness.png").exists()


def assert_defect_study(results):
    """A real (capped) pw.x relaxation carried into the defect set, its mask, maps and scores."""
    displacements = (results / "dft/displacements.tsv").read_text().splitlines()
    assert displacements[0].startswith("# relaxation: pw.x 6.7") and displacements[1].startswith("index\tsymbol\tdistance_to_vacancy")
    with io.open_dataset(results / "preprocessed/defect.h5") as f:
        mask = f["defect_mask"][()]
        assert mask.shape == (4, 4) and 0 < mask.sum() < 16 and io.read_attrs(f)["classes"] == ["RD"]
    scores = (results / "tables/defect_localisation.tsv").read_text().splitlines()
    assert scores[0] == "predictor\tmodel\tconfiguration\tseed\tlocalisation_auc" and len(scores) == 1 + 18 + 3 + 2  # + column fitting on the lattice found (ADF, iDPC)
    assert all(0 <= float(line.split("\t")[-1]) <= 1 for line in scores[1:])
    assert (results / "figures/defect_maps.pdf").exists() and (results / "dft/record.json").exists()


def planned_jobs(workdir, *args):
    result = snakemake(workdir, "--dry-run", "--quiet", "rules", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_reproduction_table_puts_the_paper_beside_the_study(study):
    """Every cell of the paper's Tables 1-3 beside the tests preset's (corrected mode only: the
    faithful column is "mode not run"), the preset's scale in the header."""
    table = (study / "results/tests/tables/reproduction.md").read_text()
    assert "study tests: 48 px patterns cropped to 32 px, 4x4 scans, seeds 888, at most 2 epochs" in table
    assert "Table 1 (none): faithful: 0 of 0 comparable cells reproduced (130 not comparable)" in table
    assert sum(line.startswith("| 1 |") for line in table.splitlines()) == 130
    rows = (study / "results/tests/tables/reproduction.csv").read_text().splitlines()
    assert len(rows) == 1 + 390 and all(",mode not run," in row for row in rows[1:])


def test_both_modes_run_the_other_mode_beside_this_one(study):
    """evaluation.both_modes over the finished corrected study: the faithful study of the same
    config is planned as a module in its own folder (its crystals ordered, as published); of the
    corrected study only the comparisons are redone, with the faithful summary beside its own."""
    (study / "both.yaml").write_text((study / "tests.yaml").read_text() + "evaluation:\n  both_modes: true\n")
    plan = snakemake(study, "--configfile", "both.yaml", "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = job_counts(planned_jobs(study, "--configfile", "both.yaml"))
    assert {name for name in counts if not name.startswith("other_mode_")} == {"all", "compare_modes", "reproduction", "total"}, counts
    assert counts["other_mode_tables"] == 1 and counts["other_mode_train"] == 14 and "other_mode_figure_maps" not in counts
    # every simulated set but the reference (the corrected study's Fig. 7 alone needs it)
    simulated = re.findall(r"\nrule other_mode_simulate:\n(?:    .*\n)*?    wildcards: dataset=(\S+)", plan.stdout)
    assert sorted(simulated) == sorted(path.stem for path in (study / "results/tests/structures").glob("*.xyz") if path.stem != "reference")
    assert '"a_site_order": "ordered"' in plan.stdout and "results/tests_faithful/structures/train_RM.xyz" in plan.stdout
    assert "--corrected results/tests/tables/summary.tsv --faithful results/tests_faithful/tables/summary.tsv" in plan.stdout


def test_nothing_reruns_when_nothing_changed(study):
    assert "Nothing to be done" in snakemake(study, "--configfile", "tests.yaml", "--dry-run").stdout


def test_changing_one_test_set_reruns_only_its_jobs(study):
    config = (study / "tests.yaml").read_text().replace("6S: {polarization: LD", "6S: {polarization: MD")
    (study / "changed.yaml").write_text(config)
    plan = planned_jobs(study, "--configfile", "changed.yaml")
    counts = job_counts(plan)
    # its own chain, then every predictor re-evaluated (17 models + the CoM baseline, on all sets;
    # the unit-cell model and column fitting from its new virtual images), the leakage audit, which
    # reads every evaluated set, and every per-cell figure
    assert counts == {"all": 1, "audit": 1, "column_fit": 4, "dataset_summary": 1, "defect_study": 1, "figure_cells": 14,
                      "figure_distributions": 3, "figure_maps": 3, "figure_sweep": 2, "figure_thickness": 1, "predict": 9 + 2 + 3 + 3 + 1,
                      "predict_unit_cell": 1, "preprocess": 1, "qstem_inputs": 1, "reproduction": 1, "simulate": 1, "structure": 1,
                      "tables": 1, "virtual_images": 1, "total": 5 + 18 + 1 + 1 + 3 + 3 + 2 + 1 + 1 + 1 + 4 + 14 + 1 + 1 + 1}, plan


def job_counts(plan):
    return {line.split()[0]: int(line.split()[1]) for line in plan.splitlines() if line.split()[1:2] and line.split()[1].isdigit()}


def test_changing_a_preprocessing_setting_reruns_no_simulation(study):
    config = (study / "tests.yaml").read_text().replace("crop_px: 32", "crop_px: 33")
    (study / "crop.yaml").write_text(config)
    counts = job_counts(planned_jobs(study, "--configfile", "crop.yaml"))
    assert "simulate" not in counts and "structure" not in counts
    assert counts["train"] == 14 and counts["train_pca_knn"] == 3  # models follow their inputs
    assert counts["preprocess"] == 8 + 8 + 7 + 2 + 4 + 3 + 1 + 1 + 1 and counts["filter_counts"] == 1 and counts["split"] == 4


def test_changing_a_training_setting_reruns_no_simulation_or_preprocessing(study):
    config = (study / "tests.yaml").read_text().replace("  batch_size: 16", "  batch_size: 16\n  lr: 0.0005")
    (study / "lr.yaml").write_text(config)
    counts = job_counts(planned_jobs(study, "--configfile", "lr.yaml"))
    assert counts["train"] == 14 and "train_pca_knn" not in counts  # PCA+kNN has no learning rate
    assert not {"simulate", "structure", "preprocess", "split", "relax_vacancy"} & set(counts), counts


def test_changing_an_evaluation_setting_reruns_only_its_figure(study):
    config = (study / "tests.yaml").read_text() + "evaluation:\n  com_field_dataset: 3S\n"
    (study / "evaluation.yaml").write_text(config)
    assert job_counts(planned_jobs(study, "--configfile", "evaluation.yaml")) == {"all": 1, "figure_com_field": 1, "total": 2}


def test_report_and_archive(study):
    result = snakemake(study, "--configfile", "tests.yaml", "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (study / "report.html").read_text()
    assert "Tables 1-3 in the paper" in report or "One of Tables 1-3" in report
    assert "Per-epoch training metrics" in report and "beam shift" in report
    assert "Models trained otherwise than in the paper" in report and "at the scan position on an Nb column" in report
    archive = subprocess.run([sys.executable, "-m", "polarmap.cli", "archive", "results/tests", "--out", "tests.tar.gz",
                              "--config", "config.yaml", "tests.yaml", "--report", "report.html"], capture_output=True, text=True, cwd=study)
    assert archive.returncode == 0, archive.stderr
    with tarfile.open(study / "tests.tar.gz") as tar:
        names = tar.getnames()
    assert "tests/report.html" in names and "tests/tables/table_none.tex" in names and "tests/config/tests.yaml" in names
    assert not any(name.endswith((".h5", ".pt")) for name in names)
