"""Tables, angles, the defect score, figures and the archive, from hand-made predictions."""

import json
import tarfile

import numpy as np
import pytest
import torch

from polarmap import io
from polarmap.atomic import save_npz_atomically
from polarmap.classes import CLASS_NAMES
from polarmap.defects import localisation_auc
from polarmap.evaluation import angular_error_deg, dataset_label
from polarmap.tables import (
    SYNTHETIC_TEST, compare_modes, paper_table, read_table, render_csv, render_latex, render_markdown, results_frame, summarize, write_tables,
)
from polarmap.models import OBJECTIVES, circular_mean


def metrics(dataset, accuracy, counts, accepted, angular_error=float("nan")):
    return {"dataset": dataset, "label": f"{dataset}-{'/'.join(accepted)}", "accuracy": accuracy, "accepted": accepted,
            "angular_error_deg": angular_error, "counts": {name: counts.get(name, 0) for name in CLASS_NAMES}}


@pytest.fixture
def study(tmp_path):
    """Two seeds of a Conv classifier and a Conv regressor, PCA+kNN and the CoM baseline."""
    files = {
        "conv-classification-none-scratch-seed1": [metrics("4E", 0.5, {"RM": 5, "LU": 5}, ["RM", "RD"]), metrics("3S", 0.9, {"RM": 9, "RU": 1}, ["RM"])],
        "conv-classification-none-scratch-seed2": [metrics("4E", 1.0, {"RD": 10}, ["RM", "RD"]), metrics("3S", 0.7, {"RM": 7, "MU": 3}, ["RM"])],
        "conv-regression-none-scratch-seed1": [metrics("4E", 0.2, {"LU": 8, "RM": 2}, ["RM", "RD"], 80.0), metrics("3S", 0.9, {"RM": 9, "RU": 1}, ["RM"], 10.0)],
        "pca_knn-none-seed1": [metrics("4E", 0.0, {"LU": 10}, ["RM", "RD"]), metrics("3S", 0.3, {"RM": 3, "LM": 7}, ["RM"])],
        "com": [metrics("4E", 0.0, {"LU": 10, "RD": 10}, ["RM", "RD"], 90.0), metrics("3S", 1.0, {"RM": 10}, ["RM"], 5.0)],
    }
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    records = []
    for name, accuracy in (("conv-classification-none-scratch-seed1", 1.0), ("conv-classification-none-scratch-seed2", 0.98)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(json.dumps({"synthetic_test_accuracy": accuracy}))
        records.append(tmp_path / name / "record.json")
    return sorted(tmp_path.glob("*.json")), records


def test_regime_table_puts_each_regime_beside_the_paper_model_and_keeps_tables_1_3_to_the_paper(study, tmp_path):
    files, records = study
    for regime, accuracies in (("diverse", (0.8, 0.6)), ("domain_randomisation", (0.4, 0.2))):
        for seed, accuracy in zip((1, 2), accuracies):
            path = tmp_path / f"conv-classification-none-scratch-{regime}-seed{seed}.json"
            path.write_text(json.dumps([metrics("4E", accuracy, {"RM": 10}, ["RM", "RD"]), metrics("3S", 1.0, {"RM": 10}, ["RM"])]))
            files = [*files, path]
    written = write_tables(files, records, tmp_path / "tables", "corrected")
    assert tmp_path / "tables/table_regimes.md" in written
    regimes = (tmp_path / "tables/table_regimes.md").read_text().splitlines()
    assert regimes[0] == "| Dataset | Conv (Cls) [none] | Conv (Cls, diverse data) [none] | Conv (Cls, domain rand.) [none] | CoM |"
    four_e = next(line for line in regimes if line.startswith("| 4E"))
    assert "| **75.0 ± 25.0** | 70.0 ± 10.0 | 30.0 ± 10.0 | 0.0 ± 0.0 |" in four_e
    assert "seeds 1, 2;" in (tmp_path / "tables/table_regimes.tex").read_text()
    paper = (tmp_path / "tables/table_none.md").read_text()
    assert "diverse" not in paper and "domain" not in paper


def test_summary_pools_seeds_accepts_two_classes_and_breaks_ties_low(study):
    summary = summarize(results_frame(*study)).set_index(["family", "dataset"])
    conv = summary.loc[("conv-classification-none-scratch", "4E")]
    assert conv.accuracy_mean == pytest.approx(0.75) and conv.accuracy_std == pytest.approx(0.25)  # population std
    assert conv.majority_class == "RD" and conv.majority_correct  # RD is accepted beside RM
    com = summary.loc[("com", "4E")]
    assert com.majority_class == "LU" and not com.majority_correct  # a LU/RD tie goes to the lower index
    assert summary.loc[("conv-classification-none-scratch", SYNTHETIC_TEST)].accuracy_mean == pytest.approx(0.99)
    assert summary.loc[("conv-regression-none-scratch", "3S")].angular_error_deg == pytest.approx(10.0)


def test_paper_table_layout_bold_and_marks(study):
    summary = summarize(results_frame(*study))
    rows = paper_table(summary, "none")
    assert [c["text"] for c in rows[0]["cells"]] == ["Dataset", "Conv (Reg)", "Conv (Cls)", "PCA", "CoM"]
    assert [r["kind"] for r in rows[1:]] == ["accuracy", "accuracy", "majority", "angle", "accuracy", "majority", "angle"]
    synthetic = rows[1]["cells"]
    assert synthetic[0]["text"] == SYNTHETIC_TEST and synthetic[2]["text"] == "99.0 ± 1.0" and synthetic[1]["text"] == ""
    three_s = rows[5]["cells"]  # 3S: CoM is best at 100 %
    assert [c.get("best") for c in three_s[1:]] == [False, False, False, True]
    markdown = render_markdown(rows)
    assert "| **100.0 ± 0.0** |" in markdown and "RD ✓" in markdown and "LU ✗" in markdown
    latex = render_latex(rows, "Table 1")
    assert "\\textbf{100.0 $\\pm$ 0.0}" in latex and "\\textcolor{red}{LU}" in latex and "\\textcolor{green!50!black}{RD}" in latex
    assert "RD (right)" in render_csv(rows) and "100.0 ± 0.0 (best)" in render_csv(rows)


def test_tables_are_written_and_modes_compared(study, tmp_path):
    written = write_tables(*study, tmp_path / "corrected", "corrected")
    assert {p.name for p in written} >= {"results.tsv", "summary.tsv", "table_none.md", "table_none.csv", "table_none.tex"}
    summary = read_table(tmp_path / "corrected/summary.tsv")
    assert summary.loc[summary["family"] == "com", "configuration"].iloc[0] == ""  # empty text survives the round trip
    faithful = summary.assign(mode="faithful", accuracy_mean=summary["accuracy_mean"] - 0.25)
    faithful.to_csv(tmp_path / "faithful.tsv", sep="\t", index=False, na_rep="nan")
    compare_modes(tmp_path / "corrected/summary.tsv", tmp_path / "faithful.tsv", tmp_path / "modes.md")
    table = (tmp_path / "modes.md").read_text()
    assert "| corrected | faithful |" in table and "| -25.0 |" in table
    with pytest.raises(ValueError, match="both in 'corrected' mode"):
        compare_modes(tmp_path / "corrected/summary.tsv", tmp_path / "corrected/summary.tsv", tmp_path / "same.md")


def test_angular_error_and_predicted_angles():
    accepted = [0, 7]  # RM or RD
    errors = angular_error_deg(np.deg2rad([10.0, -30.0, 180.0, 350.0]), accepted)
    assert errors == pytest.approx([10.0, 15.0, 135.0, 10.0])
    regression = OBJECTIVES["regression"]()
    angle = regression.angle(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    assert angle.tolist() == pytest.approx([np.pi / 2, np.pi])
    # equal probability on RU and MU: halfway between 45 and 90 degrees
    probabilities = torch.zeros(1, 8)
    probabilities[0, 1:3] = 0.5
    assert float(circular_mean(probabilities)) == pytest.approx(np.deg2rad(67.5))


def test_dataset_labels_follow_the_paper():
    assert dataset_label({"name": "1S", "classes": ["LU"], "supercell": "6x6x50", "thickness_nm": 19.92}) == "1S-LU-6x6-20nm"
    assert dataset_label({"name": "t", "classes": ["RM"], "supercell": "2x2x4", "thickness_nm": 1.59}) == "t-RM-2x2-1.6nm"
    assert dataset_label({"name": "4E", "classes": ["RM", "RD"], "supercell": "unknown", "thickness_nm": 0}) == "4E-RM/RD"


def test_defect_localisation_score():
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), bool)
    mask[12:20, 12:20] = True
    located = np.full((32, 32), 7)
    located[mask] = rng.integers(0, 7, mask.sum())  # misclassified exactly around the vacancy
    assert localisation_auc(located, mask) > 0.95
    scattered = np.where(rng.random((32, 32)) < 0.2, 3, 7)  # errors unrelated to the vacancy
    assert 0.35 < localisation_auc(scattered, mask) < 0.65
    with pytest.raises(ValueError, match="must mark some scan positions"):
        localisation_auc(located, np.zeros((32, 32), bool))


def test_figures_have_the_expected_axes(study, tmp_path):
    from polarmap import figures
    from polarmap.structures import build_supercell

    results = results_frame(*study)
    fig = figures.distributions_from_results(results, "none", tmp_path / "dist")
    assert (tmp_path / "dist.png").stat().st_size > 0 and (tmp_path / "dist.pdf").read_bytes()[:4] == b"%PDF"
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["4E-RM/RD", "3S-RM"]
    assert [t.get_text() for t in visible[0].get_xticklabels()] == list(CLASS_NAMES)
    assert visible[0].get_ylabel() == "fraction of patterns"

    grids = {"conv-classification-none-scratch-seed1": np.zeros((4, 4), np.int8), "conv-classification-none-scratch-seed2": np.ones((4, 4), np.int8),
             "conv-classification-none-scratch-seed3": np.ones((4, 4), np.int8), "com": np.full((4, 4), 7, np.int8)}
    for name, grid in grids.items():
        save_npz_atomically(tmp_path / f"{name}.npz", {"3S": grid, "3S.angle": grid.astype(np.float32)})
    fig = figures.maps_from_predictions(sorted(tmp_path.glob("*.npz")), "none", tmp_path / "maps")
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 2 and {int(np.unique(i)[0]) for i in images} == {1, 7}  # majority of 0, 1, 1 is 1
    assert figures.majority_vote([np.array([0, 3]), np.array([3, 0])]).tolist() == [0, 0]  # ties: lowest index

    atoms = build_supercell((2, 2, 2), "RM")
    step = atoms.cell.lengths()[0] / 8
    beam_shift = np.zeros((8, 8, 2))
    beam_shift[..., 1] = 1.0  # all pointing right
    fig = figures.com_field(beam_shift, step, atoms.cell.lengths()[0] / 2, atoms, "RM", tmp_path / "com")
    quiver = next(c for c in fig.axes[0].collections if c.__class__.__name__ == "Quiver")
    assert quiver.N == 16 and np.allclose(quiver.U, 1) and np.allclose(quiver.V, 0)
    assert fig.axes[0].get_xlabel().startswith("x = col")

    sweep = [{"dataset": "4E", "value": 1000}, {"dataset": "3S", "value": 100000}]
    fig = figures.sweep_from_results(results, sweep, "dose_e_per_pattern", tmp_path / "sweep")
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_xlabel() == "dose_e_per_pattern"
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} >= {"CoM", "Conv (Cls) [none]", "PCA [none]", "chance"}


def test_training_curves_show_each_family_and_name_the_capped_ones(tmp_path):
    """Two seeds of a converged classifier (3 and 5 epochs) and a capped regressor: one panel per
    objective, the family's line the mean over the seeds still training, each kept epoch a dot."""
    from polarmap import figures

    runs = {"conv-classification-none-scratch-seed1": ([0.2, 0.6, 0.5], 2, True),
            "conv-classification-none-scratch-seed2": ([0.4, 0.8, 0.9, 0.85, 0.8], 3, True),
            "conv-regression-none-scratch-seed1": ([0.1, 0.3], 2, False)}
    files = []
    for name, (accuracies, best, converged) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text("epoch,val_accuracy\n" + "".join(f"{i + 1},{a}\n" for i, a in enumerate(accuracies)))
        (tmp_path / name / "record.json").write_text(json.dumps({"best_epoch": best, "converged": converged}))
        files.append(tmp_path / name / "metrics.csv")
    fig = figures.training_curves_from_files(files, tmp_path / "curves")
    assert (tmp_path / "curves.pdf").read_bytes()[:4] == b"%PDF"
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert sorted(panels) == ["classification", "regression"]
    (mean,) = [line for line in panels["classification"].lines if line.get_label() == "Conv (Cls) none"]
    assert np.allclose(mean.get_ydata(), [30, 70, 70, 85, 80]) and mean.get_linestyle() == "-"
    assert sorted(line.get_xdata()[0] for line in panels["classification"].lines if line.get_marker() == "o") == [2, 3]
    (capped,) = [line for line in panels["regression"].lines if line.get_label().endswith("(capped)")]
    assert capped.get_linestyle() == "--"


def test_archive_packs_results_without_large_files(study, tmp_path):
    from polarmap.provenance import archive, write_record

    results = tmp_path / "results/demo"
    (results / "tables").mkdir(parents=True)
    (results / "tables/summary.tsv").write_text("family\tdataset\n")
    write_record(results / "tables/tables.record.json", [results / "tables/summary.tsv"], {"mode": "corrected"}, 0.0, seed=888)
    (results / "models/m").mkdir(parents=True)
    (results / "models/m/model.pt").write_bytes(b"weights")
    (results / "datasets").mkdir()
    (results / "datasets/1S.h5").write_bytes(b"data")
    (results / "datasets/2S.h5.partial").write_bytes(b"unfinished")
    (tmp_path / "config.yaml").write_text("study: demo\n")
    path, count = archive(results, tmp_path / "demo.tar.gz", [tmp_path / "config.yaml"])
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("demo/MANIFEST.json").read())
    assert names == {"demo/tables/summary.tsv", "demo/tables/tables.record.json", "demo/config/config.yaml", "demo/MANIFEST.json"}
    assert count == 4 and set(manifest["files"]) == names - {"demo/MANIFEST.json"}
    record = json.loads((results / "tables/tables.record.json").read_text())
    assert set(record) >= {"git_commit", "dirty", "config_hash", "inputs", "package_versions", "wall_seconds", "seed"}
    assert record["package_versions"]["torch"] == torch.__version__.split("+")[0]
    with tarfile.open(archive(results, tmp_path / "all.tar.gz", include=["models"])[0]) as tar:
        assert "demo/models/m/model.pt" in tar.getnames() and "demo/datasets/1S.h5" not in tar.getnames()
    with pytest.raises(ValueError, match="no such results folder"):
        archive(tmp_path / "missing", tmp_path / "x.tar.gz")


def test_models_that_did_not_learn_are_no_result_and_dependent_sets_are_marked(study, tmp_path):
    """Seed 2 of the classifier did not learn: the family's numbers come from seed 1 alone and say
    so; the regressor (one seed, not learned) is "did not learn" in every cell; 3S, which the
    audit found not independent, carries the dagger and the note."""
    files, records = study
    records[1].write_text(json.dumps({"synthetic_test_accuracy": 0.12, "validation_accuracy": 0.13, "learned": False}))
    regressor = tmp_path / "conv-regression-none-scratch-seed1"
    regressor.mkdir()
    (regressor / "record.json").write_text(json.dumps({"synthetic_test_accuracy": 0.1, "validation_accuracy": 0.11, "learned": False}))
    leakage = tmp_path / "leakage.csv"
    leakage.write_text("set,role,compared_with,same_content_as,sampled,exact_copies,near_copies,median_rms,independent\n"
                       "3S,test,every training set,train_RM,256,1.0,1.0,1e-7,False\n4E,experiment_like,every training set,,256,0.0,0.0,0.1,True\n")
    write_tables(files, [*records, regressor / "record.json"], tmp_path / "tables", "corrected", leakage)
    table = (tmp_path / "tables/table_none.md").read_text().splitlines()
    assert table[0] == "| Dataset | Conv (Reg) | Conv (Cls) | PCA | CoM |"
    three_s = next(line for line in table if line.startswith("| 3S"))
    assert three_s.startswith("| 3S-RM †") and "| did not learn | 90.0 ± 0.0 (1 of 2 seeds learned) |" in three_s
    four_e = table[table.index(next(line for line in table if line.startswith("| 4E"))) + 1]
    assert four_e.startswith("| Maj. class | did not learn | RM ✓ |")  # seed 1's 5 RM and 5 LU: RM (ties low)
    assert table[-1].startswith("† not independent of the training data")
    assert "$^\\dagger$" in (tmp_path / "tables/table_none.tex").read_text()
    synthetic = next(line for line in table if line.startswith(f"| {SYNTHETIC_TEST}"))
    assert "100.0 ± 0.0 (1 of 2 seeds learned)" in synthetic


def test_a_model_stopped_at_its_epoch_cap_is_marked_not_converged(study, tmp_path):
    """Seed 2 of the classifier ran out of epochs still improving: its family's numbers stand,
    marked with the double dagger and its note, in Markdown and LaTeX; the summary counts it."""
    files, records = study
    records[1].write_text(json.dumps({"synthetic_test_accuracy": 0.98, "learned": True, "converged": False}))
    records[0].write_text(json.dumps({"synthetic_test_accuracy": 1.0, "learned": True, "converged": True}))
    write_tables(files, records, tmp_path / "tables", "corrected")
    table = (tmp_path / "tables/table_none.md").read_text().splitlines()
    three_s = next(line for line in table if line.startswith("| 3S"))
    assert "| 80.0 ± 10.0 ‡ |" in three_s and "| 90.0 ± 0.0 |" in three_s  # the regressor has no record: nothing to cap
    assert table[-1].startswith("‡ not converged: a seed stopped at its epoch cap")
    assert "$^\\ddagger$" in (tmp_path / "tables/table_none.tex").read_text()
    summary = read_table(tmp_path / "tables/summary.tsv").set_index(["family", "dataset"])
    assert summary.loc[("conv-classification-none-scratch", "3S"), "seeds_capped"] == 1
    assert summary.loc[("conv-regression-none-scratch", "3S"), "seeds_capped"] == 0


def test_a_sets_faithful_test_time_augmentation_does_not_depend_on_the_other_sets(tmp_path):
    """The published code augments external sets at test time from one random stream; here each
    set draws its own stream (from the seed and its name), so declaring another set before it
    changes nothing."""
    from polarmap.evaluation import predict_many
    from polarmap.predictors import load
    from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
    from test_bad_input import save_model, scan
    from test_io import attrs

    for name in ("A", "B"):
        io.write_dataset(tmp_path / f"{name}.h5", scan(), np.zeros((4, 4), np.int8), attrs(name=name))
        preprocess_dataset(tmp_path / f"{name}.h5", tmp_path / f"p{name}.h5", PreprocessSettings(crop_px=32, rows_per_block=2), False, progress=False)
    save_model(tmp_path / "model.pt", settings={"mode": "faithful", "configuration": "augmentation"})
    predict_many(load(tmp_path / "model.pt"), [tmp_path / "pA.h5", tmp_path / "pB.h5"], tmp_path / "both.npz", tmp_path / "both.json")
    predict_many(load(tmp_path / "model.pt"), [tmp_path / "pB.h5"], tmp_path / "alone.npz", tmp_path / "alone.json")
    with np.load(tmp_path / "both.npz") as both, np.load(tmp_path / "alone.npz") as alone:
        assert np.array_equal(both["B.angle"], alone["B.angle"])
        assert not np.array_equal(both["A.angle"], both["B.angle"])  # same patterns, other streams


def test_per_cell_accuracy_is_the_majority_of_each_cells_patterns():
    from polarmap.evaluation import POSITION_BINS, grid_metrics

    # 2x2 cells of 8x8 probe positions (step 0.5 A, cell 4 A), origin on a cell corner
    attrs = {"name": "3S", "classes": ["RM"], "supercell": "2x2x50", "thickness_nm": 20.0, "scan_step_angstrom": 0.5,
             "scan_origin_angstrom": "[0.0, 0.0]"}
    grid = np.zeros((16, 16), np.int8)  # RM everywhere ...
    grid[:8, :8] = 1  # ... but cell 0 all RU
    grid[8:, 8:][:3] = 2  # and cell 3 has 24 of 64 MU: still RM by majority
    grid[8:, :8][:, :4] = -1  # cell 2: half no answer, the rest RM
    result = grid_metrics(attrs, grid, None, "hand")
    assert result["accuracy"] == pytest.approx((256 - 64 - 24 - 32) / 256)
    assert result["cell_accuracy"] == 0.75 and result["n_cells"] == 4
    heat = np.array(result["position_accuracy"], dtype=float)
    assert heat.shape == (POSITION_BINS, POSITION_BINS)
    # the left half of every cell: cell 0 wrong, cell 2 unanswered, cells 1 and 3 right
    assert heat[7, 0] == 0.5 and heat[0, 7] == pytest.approx(0.5)  # top-right bin: cell 3's MU rows are its bottom rows
    assert result["counts"]["RM"] == 256 - 64 - 24 - 32 and result["majority_class"] == "RM"


def test_column_fit_is_a_column_of_every_table_and_every_predictor_has_a_per_cell_accuracy(study, tmp_path):
    files, records = study
    for path in files:  # the learned models' and baselines' per-cell answers
        content = json.loads(path.read_text())
        path.write_text(json.dumps([{**m, "cell_accuracy": 1.0 if m["accuracy"] > 0.5 else 0.0} for m in content]))
    fitted = {**metrics("3S", 0.75, {"RM": 6}, ["RM"], 12.0), "cell_accuracy": 0.75, "unknown_fraction": 0.25, "cell_predictor": "answered"}
    coarse = {**metrics("4E", float("nan"), {}, ["RM", "RD"]), "cell_predictor": "not applicable: 2.0 scan px per unit cell, 4 needed"}
    (tmp_path / "column_fit_adf.json").write_text(json.dumps([coarse, fitted]))
    write_tables([*files, tmp_path / "column_fit_adf.json"], records, tmp_path / "tables", "corrected")
    table = (tmp_path / "tables/table_none.md").read_text().splitlines()
    assert table[0] == "| Dataset | Conv (Reg) | Conv (Cls) | PCA | CoM | Columns (ADF) |"
    three_s = table.index(next(line for line in table if line.startswith("| 3S")))
    assert table[three_s].endswith("| 75.0 ± 0.0 |")
    # a quarter of its patterns without an answer: counted apart, the others have none
    assert table[three_s + 2] == "| Unknown (%) | 0.0 | 0.0 | 0.0 | 0.0 | 25.0 |"
    four_e = table.index(next(line for line in table if line.startswith("| 4E")))
    assert table[four_e].endswith("| n/a |") and table[four_e + 1].endswith("| n/a |")
    cells = (tmp_path / "tables/table_cells.md").read_text().splitlines()
    assert cells[0] == "| Dataset (pattern / cell %) | Conv (Reg) [none] | Conv (Cls) [none] | PCA [none] | CoM | Columns (ADF) |"
    three_s = next(line for line in cells if line.startswith("| 3S"))
    # Conv (Cls): 90 and 70 % per pattern, both seeds' cells right: best per cell, with the Reg and the CoM
    assert "| **80.0 / 100.0** |" in three_s and "| **100.0 / 100.0** |" in three_s and "| 30.0 / 0.0 |" in three_s
    assert three_s.endswith("| 75.0 / 75.0 |")
    assert next(line for line in cells if line.startswith("| 4E")).endswith("| n/a |")
    from polarmap import figures

    results = read_table(tmp_path / "tables/results.tsv")
    fig = figures.sweep_from_results(results, [{"dataset": "3S", "value": 50}, {"dataset": "4E", "value": 100}], "thickness_cells", tmp_path / "sweep")
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy per pattern", "accuracy per unit cell"]
    assert "Columns (ADF)" in {t.get_text() for t in fig.axes[1].get_legend().get_texts()}
