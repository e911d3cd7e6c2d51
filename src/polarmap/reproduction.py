"""The paper's Tables 1-3 beside ours: for every cell the published accuracy, ours in `faithful`
and in `corrected`, and a verdict, with the same for the majority class.

A cell is reproduced when our mean lies within the larger of twice the paper's standard deviation
and 5 points of the paper's mean; not comparable when the set or the model is not in our study
(the experimental sets 1E-5E are unpublished: ours of those names are simulated stand-ins; VGG and
ResNet started from ImageNet in the paper), when none of its seeds learned, or when a seed
stopped at its epoch cap still improving (not converged).
"""

import csv
import io as text_io
import math
from dataclasses import dataclass

from polarmap.atomic import write_text_atomically

TOLERANCE_POINTS = 5.0
REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"
TABLE_CONFIGURATIONS = {1: "none", 2: "augmentation", 3: "augmentation_filter"}
# the paper's column -> (encoder, objective, pretraining) of ours
PAPER_MODELS = {
    "Conv (Reg)": ("conv", "regression", "scratch"), "Conv (Cls)": ("conv", "classification", "scratch"),
    "Conv (Proto)": ("conv", "prototype", "scratch"), "VGG (Reg)": ("vgg16", "regression", "imagenet"),
    "VGG (Cls)": ("vgg16", "classification", "imagenet"), "VGG (Proto)": ("vgg16", "prototype", "imagenet"),
    "ResNet (Reg)": ("resnet50", "regression", "imagenet"), "ResNet (Cls)": ("resnet50", "classification", "imagenet"),
    "ResNet (Proto)": ("resnet50", "prototype", "imagenet"), "PCA": ("pca_knn", "", ""),
}
PAPER_COLUMNS = ("table", "dataset", "model", "accuracy_mean", "accuracy_std", "majority_class")


@dataclass(frozen=True)
class Ours:
    """One cell of ours: accuracy in percent over the seeds that learned, or why there is none."""
    mean: float = math.nan
    std: float = math.nan
    majority: str = ""
    reason: str = ""  # why not comparable; "" where it is


def read_paper_tables(path) -> list[dict]:
    """resources/paper_tables.csv: one row per table, data set and model of the paper."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or tuple(rows[0]) != PAPER_COLUMNS:
        raise ValueError(f"{path}: not the paper's tables (columns {', '.join(PAPER_COLUMNS)})")
    for row in rows:
        row["table"], row["accuracy_mean"], row["accuracy_std"] = int(row["table"]), float(row["accuracy_mean"]), float(row["accuracy_std"])
    return rows


def paper_tables_from_text(text: str) -> list[dict]:
    """Tables 1-3 as the paper's text prints them (tab-separated rows, "mean ± std" cells, a
    "Maj. Class" row under each data set): how resources/paper_tables.csv was transcribed."""
    import re

    rows = []
    for table in TABLE_CONFIGURATIONS:
        block = text[text.index(f"**Table {table}.**"):].split("\n\n", 2)[1]
        lines = [re.sub(r"</?(b|i|math)>", "", line).replace("$\\pm$", "±").replace("\\pm", "±") for line in block.splitlines()]
        models = lines[0].split("\t")[1:]
        for line, below in zip(lines[1:], lines[2:] + [""]):
            cells = line.split("\t")
            if cells[0] == "Maj. Class":
                continue
            majority = below.split("\t")[1:] if below.startswith("Maj. Class") else [""] * len(models)
            for model, cell, majority_class in zip(models, cells[1:], majority):
                mean, std = (float(v) for v in cell.split("±"))
                rows.append({"table": table, "dataset": cells[0], "model": model, "accuracy_mean": mean, "accuracy_std": std,
                             "majority_class": majority_class})
    return rows


def verdict(paper_mean: float, paper_std: float, ours: float) -> str:
    """Reproduced within max(2 x the paper's std, 5 points); NaN (no number of ours) not comparable."""
    if ours is None or not math.isfinite(ours):
        return NOT_COMPARABLE
    return REPRODUCED if abs(ours - paper_mean) <= max(2 * paper_std, TOLERANCE_POINTS) else NOT_REPRODUCED


def set_name(paper_dataset: str) -> str:
    """Our name of a paper's row: "1S-LU-6x6-20nm" -> "1S"; "Synthetic test" stays."""
    return paper_dataset if paper_dataset == "Synthetic test" else paper_dataset.split("-")[0]


def our_cell(summary, table: int, paper_dataset: str, model: str) -> Ours:
    """Ours for one cell of the paper from a study's summary.tsv (pandas)."""
    if summary is None:
        return Ours(reason="mode not run")
    name = set_name(paper_dataset)
    if name.endswith("E"):
        return Ours(reason="the experimental sets are unpublished; ours of that name is a simulated stand-in")
    encoder, objective, pretrained = PAPER_MODELS[model]
    mine = summary[(summary["configuration"] == TABLE_CONFIGURATIONS[table]) & (summary["regime"] == "paper")
                   & (summary["encoder"] == encoder) & (summary["objective"].fillna("") == objective) & (summary["dataset"] == name)]
    if mine.empty:
        return Ours(reason="not in our study")
    matching = mine[mine["pretrained"].fillna("") == pretrained]
    if matching.empty:
        return Ours(reason=f"ours started from {mine.iloc[0]['pretrained']}, the paper's from {pretrained}")
    row = matching.iloc[0]
    if int(row["seeds_learned"]) == 0:
        return Ours(reason="did not learn")
    if capped := int(row.get("seeds_capped", 0)):
        # still improving when its epochs ran out: no number to hold against the paper's
        return Ours(reason=f"not converged ({capped} of {int(row['seeds_learned'])} seeds stopped at the epoch cap)")
    return Ours(100 * float(row["accuracy_mean"]), 100 * float(row["accuracy_std"]), str(row["majority_class"] or ""))


def reproduction_rows(paper: list[dict], faithful, corrected) -> list[dict]:
    """One row per cell of the paper's tables: the paper's value, ours in both modes, verdicts."""
    rows = []
    for cell in paper:
        row = {key: cell[key] for key in PAPER_COLUMNS}
        for mode, summary in (("faithful", faithful), ("corrected", corrected)):
            ours = our_cell(summary, cell["table"], cell["dataset"], cell["model"])
            row[f"{mode}_mean"], row[f"{mode}_std"], row[f"{mode}_majority"] = ours.mean, ours.std, ours.majority
            row[f"{mode}_verdict"] = verdict(cell["accuracy_mean"], cell["accuracy_std"], ours.mean) if not ours.reason else NOT_COMPARABLE
            row[f"{mode}_majority_verdict"] = (NOT_COMPARABLE if ours.reason or not cell["majority_class"] or not ours.majority
                                               else REPRODUCED if ours.majority == cell["majority_class"] else NOT_REPRODUCED)
            row[f"{mode}_reason"] = ours.reason
        rows.append(row)
    return rows


def summary_lines(rows: list[dict]) -> list[str]:
    """Per table and mode: how many cells (and majority classes) reproduce of those comparable."""
    lines = []
    for table in sorted({r["table"] for r in rows}):
        mine = [r for r in rows if r["table"] == table]
        parts = []
        for mode in ("faithful", "corrected"):
            counted = {v: sum(r[f"{mode}_verdict"] == v for r in mine) for v in (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)}
            majority = {v: sum(r[f"{mode}_majority_verdict"] == v for r in mine) for v in (REPRODUCED, NOT_REPRODUCED)}
            parts.append(f"{mode}: {counted[REPRODUCED]} of {counted[REPRODUCED] + counted[NOT_REPRODUCED]} comparable cells reproduced "
                         f"({counted[NOT_COMPARABLE]} not comparable), majority class {majority[REPRODUCED]} of "
                         f"{majority[REPRODUCED] + majority[NOT_REPRODUCED]}")
        lines.append(f"Table {table} ({TABLE_CONFIGURATIONS[table]}): " + "; ".join(parts) + ".")
    return lines


def _number(mean: float, std: float) -> str:
    return "" if not math.isfinite(mean) else f"{mean:.1f} ± {std:.1f}"


def write_reproduction(rows: list[dict], out_dir, scale_note: str) -> list:
    """tables/reproduction.{md,csv,tex}."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["Table", "Dataset", "Model", "Paper", "Paper maj.", "Faithful", "Verdict", "Maj.", "Corrected", "Verdict", "Maj.", "Why not comparable"]
    table_rows = [[str(r["table"]), r["dataset"], r["model"], _number(r["accuracy_mean"], r["accuracy_std"]), r["majority_class"],
                   _number(r["faithful_mean"], r["faithful_std"]), r["faithful_verdict"], r["faithful_majority"],
                   _number(r["corrected_mean"], r["corrected_std"]), r["corrected_verdict"], r["corrected_majority"],
                   r["corrected_reason"] or r["faithful_reason"]] for r in rows]
    intro = [f"The paper's Tables 1-3 beside ours ({scale_note}). Reproduced: within max(2 x the paper's std, "
             f"{TOLERANCE_POINTS:g} points) of the paper's mean.", "", *summary_lines(rows), ""]
    markdown = "\n".join(intro + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table_rows]) + "\n"
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(rows[0]) if rows else [])
    writer.writerows([[("nan" if isinstance(v, float) and not math.isfinite(v) else v) for v in r.values()] for r in rows])
    latex = "\n".join(["\\begin{longtable}{" + "l" * len(header) + "}", " & ".join(header) + " \\\\ \\hline"]
                      + [" & ".join(cell.replace("±", "$\\pm$").replace("&", "\\&").replace("_", "\\_") for cell in row) + " \\\\" for row in table_rows]
                      + ["\\caption{" + " ".join(intro).replace("_", "\\_") + "}", "\\end{longtable}"]) + "\n"
    written = []
    for suffix, text in ((".md", markdown), (".csv", buffer.getvalue()), (".tex", latex)):
        written.append(out_dir / f"reproduction{suffix}")
        write_text_atomically(written[-1], text)
    return written
