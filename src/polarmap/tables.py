"""The study's tables from the predictors' metrics: results.tsv (every predictor x data set),
summary.tsv (per model family, seeds pooled), the paper's Tables 1-3, the regime and per-cell
tables, each rendered as Markdown, CSV and LaTeX, and the corrected-vs-faithful comparison."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from polarmap import predictors
from polarmap.atomic import write_text_atomically
from polarmap.classes import CLASS_NAMES, majority_class
from polarmap.models import LEARNED_MIN_VALIDATION_ACCURACY, OBJECTIVE_LABELS

SYNTHETIC_TEST = "Synthetic test"
COUNT_COLUMNS = [f"count_{name}" for name in CLASS_NAMES]

CONFIGURATION_TITLES = {
    "none": "no augmentation and no filtering",
    "augmentation": "augmentation and no filtering",
    "augmentation_filter": "augmentation and filtering",
}


def _training_outcome(record: dict) -> dict:
    """Whether a predictor learned and whether its training converged (stopped on a plateau, not
    at its epoch cap), from its record.json; what needs no training (the CoM baseline, column
    fitting) or trains in closed form (PCA+kNN) has no record or no epochs: both true."""
    return {"learned": bool(record.get("learned", True)), "converged": bool(record.get("converged", True))}


def results_frame(metrics_files, record_files=()):
    """One row per predictor x data set (pandas): accuracy, angular error, pooled counts, whether
    the predictor learned and converged (from its record.json), plus the synthetic test accuracy
    of each trained model."""
    import pandas as pd

    records = {Path(path).parent.name: json.loads(Path(path).read_text()) for path in record_files}
    rows = []
    for path in map(Path, metrics_files):
        info = {**asdict(predictors.describe(path.stem)), **_training_outcome(records.get(path.stem, {}))}
        for r in json.loads(path.read_text()):
            rows.append({**info, "predictor": path.stem, "dataset": r["dataset"], "dataset_label": r.get("label", r["dataset"]),
                         "thickness_nm": r.get("thickness_nm", float("nan")),
                         "accepted": "/".join(r["accepted"]), "accuracy": r["accuracy"],
                         "cell_accuracy": r.get("cell_accuracy", float("nan")), "unknown_fraction": r.get("unknown_fraction", 0.0),
                         "angular_error_deg": r.get("angular_error_deg", float("nan")),
                         **{f"count_{k}": r["counts"][k] for k in CLASS_NAMES}})
    for name, record in records.items():
        info = {**asdict(predictors.describe(name)), **_training_outcome(record)}
        rows.append({**info, "predictor": name, "dataset": SYNTHETIC_TEST, "dataset_label": SYNTHETIC_TEST, "thickness_nm": float("nan"),
                     "accepted": "", "accuracy": record["synthetic_test_accuracy"], "cell_accuracy": float("nan"), "unknown_fraction": 0.0,
                     "angular_error_deg": float("nan"),
                     **dict.fromkeys(COUNT_COLUMNS, 0)})
    if not rows:
        raise ValueError("no predictions to tabulate: the metrics files are empty")
    return pd.DataFrame(rows)


def summarize(results):
    """Per model family and data set: accuracy mean +- population std over seeds, mean angular
    error, and the majority class of the predictions pooled over seeds (ties: lowest index),
    marked right when it is an accepted class."""
    import pandas as pd

    rows = []
    for (family, dataset), all_seeds in results.groupby(["family", "dataset"], sort=False):
        # seeds that did not learn are no result: only the others are pooled (none: no numbers)
        group = all_seeds[all_seeds["learned"].astype(bool)]
        pooled = group[COUNT_COLUMNS].to_numpy().sum(axis=0)
        majority = CLASS_NAMES[int(majority_class(pooled))] if pooled.sum() else ""
        first = all_seeds.iloc[0]
        rows.append({
            "family": family, "label": first["label"], "encoder": first["encoder"], "objective": first["objective"],
            "configuration": first["configuration"], "pretrained": first["pretrained"], "regime": first["regime"], "dataset": dataset,
            "dataset_label": first["dataset_label"], "thickness_nm": first["thickness_nm"], "seeds": len(all_seeds),
            "seeds_learned": len(group), "seeds_capped": int((~group["converged"].astype(bool)).sum()),
            "accuracy_mean": group["accuracy"].mean() if len(group) else float("nan"),
            "accuracy_std": group["accuracy"].std(ddof=0) if len(group) else float("nan"),
            "cell_accuracy_mean": group["cell_accuracy"].mean() if len(group) else float("nan"),
            "unknown_fraction_mean": group["unknown_fraction"].mean() if len(group) else float("nan"),
            "cell_accuracy_std": group["cell_accuracy"].std(ddof=0) if len(group) else float("nan"),
            "angular_error_deg": group["angular_error_deg"].mean() if len(group) else float("nan"),
            "majority_class": majority, "majority_correct": bool(majority) and majority in first["accepted"].split("/"),
        })
    return pd.DataFrame(rows)


def _column_order(summary, configuration: str) -> list[str]:
    """The paper's columns for one configuration: Conv, VGG, ResNet x (Reg, Cls, Proto), PCA;
    then the unit-cell model (which sees whole cells, not preprocessed patterns), then the
    baselines, which need no training: CoM and column fitting. Models trained otherwise
    than in the paper (diverse data, domain randomisation) are in the regime table instead."""
    per_cell_or_untrained = summary["encoder"].map(lambda e: predictors.encoder_kind(e).per_cell or not predictors.encoder_kind(e).trained)
    mine = summary[((summary["configuration"] == configuration) & (summary["regime"] == "paper")) | per_cell_or_untrained.astype(bool)]
    objectives = list(OBJECTIVE_LABELS) + [""]
    keyed = {(predictors.table_rank(r.encoder), objectives.index(r.objective), r.pretrained, r.family): r.family for r in mine.itertuples()}
    return [keyed[key] for key in sorted(keyed)]


def regime_families(summary) -> list[str]:
    """Columns of the regime table (issue 9): each model trained on diverse data or with domain
    randomisation, beside the same model trained as in the paper, then the baselines."""
    regimes = ["paper", "diverse", "domain_randomisation", "diverse+domain_randomisation"]
    families = summary.drop_duplicates("family")
    model = ["encoder", "objective", "configuration", "pretrained"]
    varied = set(families.loc[families["regime"] != "paper", model].itertuples(index=False, name=None))
    mine = [r for r in families.itertuples() if (r.encoder, r.objective, r.configuration, r.pretrained) in varied]
    configurations = list(CONFIGURATION_TITLES)
    order = sorted(mine, key=lambda r: (configurations.index(r.configuration), r.encoder, r.objective, r.pretrained, regimes.index(r.regime)))
    columns = [r.family for r in order]
    if columns:
        untrained = [r for r in families.itertuples() if not predictors.encoder_kind(r.encoder).trained]
        columns += [r.family for r in sorted(untrained, key=lambda r: (predictors.table_rank(r.encoder), r.family))]
    return columns


def paper_table(summary, configuration: str, dependent: set[str] = frozenset()) -> list[dict]:
    """Rows of one of Tables 1-3 (see `table_rows`)."""
    return table_rows(summary, _column_order(summary, configuration), dependent=dependent)


DEPENDENT_MARK = " †"
DEPENDENT_NOTE = "† not independent of the training data: a copy or near copy of training patterns (tables/leakage.md)."
DID_NOT_LEARN = "did not learn"
CAPPED_MARK = " ‡"
CAPPED_NOTE = ("‡ not converged: a seed stopped at its epoch cap while its validation score was still improving "
               "(raise training.max_epochs for a converged number).")
NOT_APPLICABLE = "n/a"  # e.g. column fitting on a scan too coarse to separate the columns


def _accuracy_text(entry) -> str:
    if entry.seeds_learned == 0:
        return DID_NOT_LEARN
    if not np.isfinite(entry.accuracy_mean):
        return NOT_APPLICABLE
    text = f"{100 * entry.accuracy_mean:.1f} ± {100 * entry.accuracy_std:.1f}" + CAPPED_MARK * bool(entry.seeds_capped)
    return text + (f" ({entry.seeds_learned} of {entry.seeds} seeds learned)" if entry.seeds_learned < entry.seeds else "")


def _shown_and_best(entries: list, column: str) -> tuple[list, float | None]:
    """The percentages a table row shows (None: no entry, no learned seed, or not applicable) and
    the best of them."""
    shown = [round(100 * getattr(e, column), 1) if e is not None and e.seeds_learned and np.isfinite(getattr(e, column)) else None
             for e in entries]
    return shown, max((v for v in shown if v is not None), default=None)


def _family_title(by_key: dict, datasets: list[str], family: str, with_configuration: bool) -> str:
    """A table's column header: the family's label, and its configuration if asked and it has one."""
    first = by_key[next((family, d) for d in datasets if (family, d) in by_key)]
    return first.label + (f" [{first.configuration}]" if with_configuration and first.configuration else "")


def table_rows(summary, families: list[str], with_configuration: bool = False, dependent: set[str] = frozenset()) -> list[dict]:
    """Per data set an accuracy row (percent, mean +- std over the seeds that learned, best in
    the row marked; "did not learn" where none did; an unknown pattern is not right) and a
    majority-class row (marked right or wrong), an "unknown" row where some patterns were out of a
    model's training distribution (or without an answer), and an angular-error row where a model
    gives angles; one column per model family, its
    header naming the configuration if asked. Data sets in `dependent` (not independent of the
    training data) are marked with a dagger. Each cell: {"text", "best", "correct"}."""
    by_key = {(r.family, r.dataset): r for r in summary.itertuples()}
    datasets = list(dict.fromkeys(d for d in summary["dataset"] if any((f, d) in by_key for f in families)))
    datasets.sort(key=lambda d: d != SYNTHETIC_TEST)  # stable: the synthetic test first, then config order

    header = ["Dataset"] + [_family_title(by_key, datasets, f, with_configuration) for f in families]
    rows = [{"kind": "header", "cells": [{"text": h} for h in header]}]
    for dataset in datasets:
        entries = [by_key.get((f, dataset)) for f in families]
        shown, best = _shown_and_best(entries, "accuracy_mean")
        label = entries[[e is not None for e in entries].index(True)].dataset_label + DEPENDENT_MARK * (dataset in dependent)
        rows.append({"kind": "accuracy", "cells": [{"text": label}] + [
            {"text": _accuracy_text(e), "best": v is not None and v == best} if e is not None else {"text": ""}
            for e, v in zip(entries, shown)]})
        if dataset != SYNTHETIC_TEST:
            rows.append({"kind": "majority", "cells": [{"text": "Maj. class"}] + [
                ({"text": e.majority_class, "correct": e.majority_correct} if e.seeds_learned and e.majority_class
                 else {"text": NOT_APPLICABLE if e.seeds_learned else DID_NOT_LEARN}) if e is not None
                else {"text": ""} for e in entries]})
            if any(e is not None and e.seeds_learned and e.unknown_fraction_mean > 0 for e in entries):
                rows.append({"kind": "unknown", "cells": [{"text": "Unknown (%)"}] + [
                    {"text": f"{100 * e.unknown_fraction_mean:.1f}"} if e is not None and e.seeds_learned and np.isfinite(e.unknown_fraction_mean)
                    else {"text": ""} for e in entries]})
            if any(e is not None and np.isfinite(e.angular_error_deg) for e in entries):
                rows.append({"kind": "angle", "cells": [{"text": "Ang. error (deg)"}] + [
                    {"text": f"{e.angular_error_deg:.1f}"} if e is not None and np.isfinite(e.angular_error_deg) else {"text": ""}
                    for e in entries]})
    return rows


def cell_table_rows(summary, families: list[str], dependent: set[str] = frozenset()) -> list[dict]:
    """Per data set whose unit cells are known: per-pattern and per-unit-cell accuracy (percent,
    means over the seeds that learned; a learned predictor's cell answer is the majority vote of
    its patterns), the best per-cell accuracy marked; one column per predictor family."""
    by_key = {(r.family, r.dataset): r for r in summary.itertuples()}
    datasets = list(dict.fromkeys(d for d in summary.loc[np.isfinite(summary["cell_accuracy_mean"].astype(float)), "dataset"]))
    families = [f for f in families if any((f, d) in by_key for d in datasets)]
    header = ["Dataset (pattern / cell %)"] + [_family_title(by_key, datasets, f, True) for f in families]
    rows = [{"kind": "header", "cells": [{"text": h} for h in header]}]
    for dataset in datasets:
        entries = [by_key.get((f, dataset)) for f in families]
        shown, best = _shown_and_best(entries, "cell_accuracy_mean")
        label = next(e for e in entries if e is not None).dataset_label + DEPENDENT_MARK * (dataset in dependent)
        rows.append({"kind": "accuracy", "cells": [{"text": label}] + [
            {"text": ""} if e is None else {"text": DID_NOT_LEARN} if not e.seeds_learned else {"text": NOT_APPLICABLE} if v is None else
            {"text": f"{100 * e.accuracy_mean:.1f} / {v:.1f}" + CAPPED_MARK * bool(e.seeds_capped), "best": v == best}
            for e, v in zip(entries, shown)]})
    return rows


def render_markdown(rows: list[dict]) -> str:
    def cell(c):
        if c.get("best"):
            return f"**{c['text']}**"
        if "correct" in c:
            return f"{c['text']} {'✓' if c['correct'] else '✗'}"
        return c["text"]

    lines = ["| " + " | ".join(c["text"] for c in rows[0]["cells"]) + " |", "|" + "---|" * len(rows[0]["cells"])]
    lines += ["| " + " | ".join(cell(c) for c in row["cells"]) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def _latex_marks(text: str) -> str:
    return text.replace("†", "$^\\dagger$").replace("‡", "$^\\ddagger$")


def render_latex(rows: list[dict], caption: str) -> str:
    def cell(c):
        text = _latex_marks(c["text"].replace("±", "$\\pm$"))
        if c.get("best"):
            return f"\\textbf{{{text}}}"
        if "correct" in c and text:
            return f"\\textcolor{{{'green!50!black' if c['correct'] else 'red'}}}{{{text}}}"
        return text

    n = len(rows[0]["cells"])
    lines = [
        "% needs \\usepackage[table]{xcolor}", "\\begin{table}", "\\centering", "\\footnotesize",
        f"\\caption{{{_latex_marks(caption)}}}", f"\\begin{{tabular}}{{l{'c' * (n - 1)}}}", "\\hline",
        " & ".join(cell(c) for c in rows[0]["cells"]) + " \\\\", "\\hline",
    ]
    lines += [" & ".join(cell(c) for c in row["cells"]) + " \\\\" for row in rows[1:]]
    lines += ["\\hline", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    import csv
    import io as text_io

    def cell(c):
        if "correct" in c and c["text"]:
            return f"{c['text']} ({'right' if c['correct'] else 'wrong'})"
        return c["text"] + (" (best)" if c.get("best") else "")

    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c["text"] for c in rows[0]["cells"]])
    for row in rows[1:]:
        writer.writerow([cell(c) for c in row["cells"]])
    return buffer.getvalue()


def write_tables(metrics_files, record_files, out_dir, mode: str, leakage_csv="") -> list[Path]:
    """results.tsv (one row per predictor x data set), summary.tsv (per model family) and one
    table per preprocessing configuration as Markdown, CSV and LaTeX (paper Tables 1-3), plus
    table_regimes when some models were trained otherwise than in the paper, and table_cells (every
    predictor per pattern and per unit cell). With the leakage
    audit's CSV, every set that is not independent of training is marked."""
    from polarmap.audit import dependent_sets

    dependent = dependent_sets(leakage_csv) if leakage_csv else set()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = results_frame(metrics_files, record_files)
    summary = summarize(results)
    summary.insert(0, "mode", mode)
    written = [out_dir / "results.tsv", out_dir / "summary.tsv"]
    write_text_atomically(written[0], results.to_csv(sep="\t", index=False, na_rep="nan"))
    write_text_atomically(written[1], summary.to_csv(sep="\t", index=False, na_rep="nan"))
    seeds = ", ".join(str(seed) for seed in sorted(set(results["seed"])) if seed >= 0)

    def caption(subject):
        return (f"Accuracy (top row, percent, mean $\\pm$ std over seeds {seeds}; seeds that did not learn left out; best in bold; "
                f"\\emph{{{DID_NOT_LEARN}}}: validation accuracy below {100 * LEARNED_MIN_VALIDATION_ACCURACY:.0f} \\%) and majority class "
                f"(green right, red wrong) for {subject} ({mode} mode).")

    tables = {f"table_{c}": (paper_table(summary, c, dependent), caption(f"the {CONFIGURATION_TITLES[c]} configuration"))
              for c in CONFIGURATION_TITLES if c in set(summary[summary["regime"] == "paper"]["configuration"])}
    if regime_columns := regime_families(summary):
        tables["table_regimes"] = (table_rows(summary, regime_columns, with_configuration=True, dependent=dependent),
                                   caption("models trained as in the paper, on thickness-diverse data and with domain randomisation"))
    untrained = {r.family for r in summary.itertuples() if not predictors.encoder_kind(r.encoder).trained}
    every_family = sorted(dict.fromkeys([f for c in CONFIGURATION_TITLES for f in _column_order(summary, c)] + regime_columns),
                          key=lambda family: family in untrained)  # stable: the baselines last
    tables["table_cells"] = (cell_table_rows(summary, every_family, dependent),
                             f"Per-pattern and per-unit-cell accuracy (percent, means over seeds {seeds}; seeds that did not learn left out; "
                             f"best per-cell accuracy in bold) of every predictor, on the sets whose unit cells are known ({mode} mode).")
    for stem, (rows, caption_text) in tables.items():
        notes = [note for mark, note in ((DEPENDENT_MARK, DEPENDENT_NOTE), (CAPPED_MARK, CAPPED_NOTE))
                 if any(mark in cell["text"] for row in rows for cell in row["cells"])]
        markdown = render_markdown(rows) + "".join(f"\n{note}\n" for note in notes)
        latex = render_latex(rows, " ".join([caption_text, *notes]))
        for suffix, text in ((".md", markdown), (".csv", render_csv(rows)), (".tex", latex)):
            written.append(out_dir / f"{stem}{suffix}")
            write_text_atomically(written[-1], text)
    return written


def read_table(path):
    """results.tsv / summary.tsv back as pandas: empty text stays empty, "nan" is missing."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan"])


def compare_modes(summary_a, summary_b, out) -> None:
    """Accuracy and majority class of the same model families and data sets in two studies run in
    different modes (`corrected`, `faithful`), side by side, with the change: what the published
    code's defects do to each number. Markdown."""
    a, b = read_table(summary_a), read_table(summary_b)
    mode_a, mode_b = a["mode"].iloc[0], b["mode"].iloc[0]
    if mode_a == mode_b:
        raise ValueError(f"{summary_a} and {summary_b} are both in {mode_a!r} mode: compare a corrected study with a faithful one")
    merged = a.merge(b, on=["family", "dataset"], suffixes=("_a", "_b"))
    if merged.empty:
        raise ValueError(f"{summary_a} and {summary_b} share no model family and data set: run the same models and sets in both modes")
    lines = [f"| Dataset | Model | Configuration | {mode_a} | {mode_b} | change (points) | majority {mode_a} | majority {mode_b} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in merged.itertuples():
        def majority(name, correct):
            return f"{name} {'✓' if correct else '✗'}" if name else ""
        lines.append(
            f"| {r.dataset_label_a} | {r.label_a} | {r.configuration_a} | "
            f"{100 * r.accuracy_mean_a:.1f} ± {100 * r.accuracy_std_a:.1f} | {100 * r.accuracy_mean_b:.1f} ± {100 * r.accuracy_std_b:.1f} | "
            f"{100 * (r.accuracy_mean_b - r.accuracy_mean_a):+.1f} | {majority(r.majority_class_a, r.majority_correct_a)} | "
            f"{majority(r.majority_class_b, r.majority_correct_b)} |")
    write_text_atomically(out, "\n".join(lines) + "\n")
