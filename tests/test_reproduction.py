"""The paper's Tables 1-3 as data, and ours beside them with a verdict per cell."""

import math
import os
from pathlib import Path

import pandas as pd
import pytest

from polarmap.reproduction import (
    NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED, paper_tables_from_text, read_paper_tables, reproduction_rows, summary_lines, verdict,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_TABLES = ROOT / "resources/paper_tables.csv"
PAPER = Path(os.environ.get("POLARMAP_SHARED", ROOT.parent / "shared")) / "paper.md"


@pytest.mark.skipif(not PAPER.exists(), reason=f"{PAPER} is not beside the clone (POLARMAP_SHARED names its folder)")
def test_the_paper_tables_resource_is_the_papers_text():
    assert read_paper_tables(PAPER_TABLES) == paper_tables_from_text(PAPER.read_text())


def test_the_resource_holds_every_cell_of_tables_1_to_3():
    rows = read_paper_tables(PAPER_TABLES)
    assert len(rows) == 3 * 13 * 10  # 3 tables x 13 rows x 10 models
    first = {(r["dataset"], r["model"]): r for r in rows if r["table"] == 1}
    assert first[("1S-LU-6x6-20nm", "ResNet (Cls)")]["accuracy_mean"] == 63.1 and first[("1S-LU-6x6-20nm", "ResNet (Cls)")]["accuracy_std"] == 2.2
    assert first[("4S-RD-6x6-50nm", "PCA")]["majority_class"] == "RD" and first[("Synthetic test", "PCA")]["majority_class"] == ""


def test_the_verdict_rule():
    assert verdict(50.0, 1.0, 54.9) == REPRODUCED  # within the 5-point floor
    assert verdict(50.0, 1.0, 55.1) == NOT_REPRODUCED
    assert verdict(50.0, 10.0, 69.5) == REPRODUCED  # within 2 std
    assert verdict(50.0, 10.0, 29.0) == NOT_REPRODUCED
    assert verdict(50.0, 1.0, math.nan) == NOT_COMPARABLE


def summary(rows):
    base = {"regime": "paper", "configuration": "none", "seeds_learned": 2, "seeds_capped": 0, "accuracy_std": 0.01}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_our_cells_beside_the_papers():
    """Ours in percent; an unpublished experimental set, another pretraining, a model that did not
    learn and a missing mode are not comparable, with the reason."""
    paper = [r for r in read_paper_tables(PAPER_TABLES) if r["table"] == 1]
    faithful = summary([
        {"encoder": "conv", "objective": "classification", "pretrained": "scratch", "dataset": "3S", "accuracy_mean": 0.99, "majority_class": "RM"},
        {"encoder": "conv", "objective": "classification", "pretrained": "scratch", "dataset": "1S", "accuracy_mean": 0.10, "majority_class": "RU"},
        {"encoder": "conv", "objective": "classification", "pretrained": "scratch", "dataset": "1E", "accuracy_mean": 0.11, "majority_class": "LD"},
        {"encoder": "vgg16", "objective": "classification", "pretrained": "scratch", "dataset": "3S", "accuracy_mean": 0.70, "majority_class": "RM"},
        {"encoder": "pca_knn", "objective": "", "pretrained": "", "dataset": "3S", "accuracy_mean": 0.2, "majority_class": "RM", "seeds_learned": 0},
        {"encoder": "conv", "objective": "regression", "pretrained": "scratch", "dataset": "3S", "accuracy_mean": 0.5, "majority_class": "RM",
         "seeds_capped": 1},
    ])
    rows = {(r["dataset"], r["model"]): r for r in reproduction_rows(paper, faithful, None)}
    conv_3s = rows[("3S-RM-2x2-20nm", "Conv (Cls)")]
    assert conv_3s["faithful_mean"] == pytest.approx(99.0) and conv_3s["faithful_verdict"] == REPRODUCED
    assert conv_3s["faithful_majority_verdict"] == REPRODUCED and conv_3s["corrected_reason"] == "mode not run"
    conv_1s = rows[("1S-LU-6x6-20nm", "Conv (Cls)")]
    assert conv_1s["faithful_verdict"] == NOT_REPRODUCED and conv_1s["faithful_majority_verdict"] == NOT_REPRODUCED
    assert rows[("1E-RM", "Conv (Cls)")]["faithful_verdict"] == NOT_COMPARABLE and "stand-in" in rows[("1E-RM", "Conv (Cls)")]["faithful_reason"]
    assert "imagenet" in rows[("3S-RM-2x2-20nm", "VGG (Cls)")]["faithful_reason"]
    assert rows[("3S-RM-2x2-20nm", "PCA")]["faithful_reason"] == "did not learn"
    assert rows[("5S-RU-6x6-20nm", "Conv (Cls)")]["faithful_reason"] == "not in our study"
    assert rows[("3S-RM-2x2-20nm", "Conv (Reg)")]["faithful_verdict"] == NOT_COMPARABLE
    assert rows[("3S-RM-2x2-20nm", "Conv (Reg)")]["faithful_reason"] == "not converged (1 of 2 seeds stopped at the epoch cap)"
    line, = summary_lines(list(rows.values()))
    assert line.startswith("Table 1 (none): faithful: 1 of 2 comparable cells reproduced (128 not comparable), majority class 1 of 2")


def test_the_reproduction_command_writes_three_tables(tmp_path):
    from polarmap.cli import main

    faithful = summary([{"encoder": "conv", "objective": "prototype", "pretrained": "scratch", "dataset": "Synthetic test",
                         "accuracy_mean": 0.995, "majority_class": ""}])
    faithful.to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    assert main(["reproduction", "--paper", str(PAPER_TABLES), "--faithful", str(tmp_path / "summary.tsv"), "--scale", "tests preset",
                 "--out-dir", str(tmp_path / "tables")]) == 0
    markdown = (tmp_path / "tables/reproduction.md").read_text()
    assert "tests preset" in markdown and "| 1 | Synthetic test | Conv (Proto) | 99.6 ± 0.5 |  | 99.5 ± 1.0 | reproduced |" in markdown
    assert (tmp_path / "tables/reproduction.csv").exists() and (tmp_path / "tables/reproduction.tex").exists()
    assert main(["reproduction", "--out-dir", str(tmp_path / "none")]) == 2
