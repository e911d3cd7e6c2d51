"""Budget or physics? Per-pattern accuracy on independent crystals against the number of training
crystals per class, with the accuracy by probe position in the unit cell (issue 23).

    python benchmarks/learning_curve.py --results results/default [--crystals 1 2 4] [--seeds 888 1212 2024]
        [--objective classification] [--max-epochs 60] [--patience 8] [--name learning_curve]

(the README's figures: `--config` a copy of config.yaml with `datasets.training.crystals: 8` and
`--crystals 1 2 4 8`, once per objective, `--objective regression --name learning_curve_regression`)

Reads a study's preprocessed sets (run it first, or only the sets this needs:
`snakemake --workflow-profile workflow/profiles/default <results>/preprocessed/{train_*,1S,...}.h5`)
and the study's own training settings for the Conv (config.yaml: lr, batch, early stopping on
validation accuracy), and trains, for each number n of crystals per class and seed, a Conv on the
first n crystals of every class, each giving 1/n of its patterns (the study's rule: as many
patterns per class whatever n), to convergence: up to --max-epochs, stopped on a plateau of
--patience epochs. Each model is then applied to the study's independent 20 nm test crystals
(1S, 3S, 5S, 6S, 7S: other crystals, other supercells): accuracy per set, and per-pattern accuracy
binned by the probe's position in its cell (8x8 bins; near the Nb column: the 2x2 central bins,
within a quarter cell; near the A sites: the 4 corner bins; between: the rest).

If accuracy rises with n while the patterns stay as many, the crystals (the budget) limit it; if
it flattens, or positions in the cell stay near chance (12.5 %) at every n, the physics does. Writes benchmarks/<name>.md and .json, and the figure
benchmarks/out/<name>.png.
"""

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS_20NM = ["1S", "3S", "5S", "6S", "7S"]


def position_regions(bins: int) -> dict[str, np.ndarray]:
    """Masks of the (bins, bins) position grid: the 2x2 bins round the Nb column at the cell's
    centre, the 4 corner bins at the A sites, and the rest."""
    centre = np.zeros((bins, bins), bool)
    centre[bins // 2 - 1: bins // 2 + 1, bins // 2 - 1: bins // 2 + 1] = True
    corners = np.zeros((bins, bins), bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    return {"near Nb": centre, "near A": corners, "between": ~(centre | corners)}


def train_one(results: Path, out: Path, config: dict, crystals: int, seed: int, objective: str, max_epochs: int, patience: int) -> dict:
    from polarmap.config import training_jobs, training_set_names
    from polarmap.predictors import neural_name
    from polarmap.splits import SplitSettings, make_split
    from polarmap.training import TrainSettings, train

    names = training_set_names(config, "base")
    classes = config["datasets"]["training"]["classes"]
    chosen = names[: crystals * len(classes)]  # names run crystal by crystal over the classes
    preprocessed = [results / f"preprocessed/{name}.h5" for name in chosen]
    folder = out / f"crystals{crystals}" / neural_name("conv", objective, "none", "scratch", seed, "base", "paper")
    folder.mkdir(parents=True, exist_ok=True)
    split = folder / "split.npz"
    if not (folder / "record.json").exists():
        make_split(preprocessed, split, "none", seed, SplitSettings(), SplitSettings(fractions=(0.9, 0.1)), sets_per_class=crystals)
        job = next(job for job in training_jobs(config).values() if job["encoder"] == "conv" and job["configuration"] == "none")
        settings = replace(TrainSettings.from_job(job), objective=objective, seed=seed, max_epochs=max_epochs, patience=patience)
        train(split, preprocessed, folder, settings, progress=False)
    return {"folder": folder, "record": json.loads((folder / "record.json").read_text())}


def evaluate(folder: Path, results: Path, tests: list[str]) -> dict:
    from polarmap import predictors
    from polarmap.evaluation import predict_grids

    predictor = predictors.load(folder / "model.pt")
    per_set, heats = {}, []
    for name in tests:
        metrics, _ = predict_grids(predictor, results / f"preprocessed/{name}.h5")
        per_set[name] = metrics["accuracy"]
        heats.append(np.array(metrics["position_accuracy"], dtype=float))
    heat = np.nanmean(heats, axis=0)
    regions = {region: float(np.nanmean(heat[mask])) for region, mask in position_regions(len(heat)).items()}
    return {"per_set": per_set, "accuracy": float(np.mean(list(per_set.values()))), "regions": regions, "heat": heat.tolist()}


def figure(rows: list[dict], objective: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    crystals = sorted({r["crystals"] for r in rows})
    for key, label, style in (("accuracy", "all positions", "o-"), ("near Nb", "near the Nb column", "s--"),
                              ("near A", "near the A sites", "^--"), ("between", "between columns", "v:")):
        values = [[r["accuracy"] if key == "accuracy" else r["regions"][key] for r in rows if r["crystals"] == n] for n in crystals]
        means, stds = 100 * np.array([np.mean(v) for v in values]), 100 * np.array([np.std(v) for v in values])
        left.errorbar(crystals, means, yerr=stds, fmt=style, capsize=3, label=label)
    left.axhline(12.5, color="0.5", linestyle=":", linewidth=1)
    left.set(xscale="log", xticks=crystals, xticklabels=[str(n) for n in crystals], ylim=(0, 100),
             xlabel="training crystals per class (as many patterns per class)", ylabel="accuracy on independent 20 nm crystals (%)",
             title=f"Conv ({objective}), mean and std over seeds")
    left.minorticks_off()
    left.legend(fontsize=7)
    largest = [r for r in rows if r["crystals"] == crystals[-1]]
    shown = right.imshow(100 * np.nanmean([r["heat"] for r in largest], axis=0), origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=100)
    right.plot([0.5], [0.5], "w+", markersize=12)
    right.set(xlabel="position in cell (col)", ylabel="position in cell (row)", title=f"accuracy by probe position, {crystals[-1]} crystals")
    fig.colorbar(shown, ax=right, label="%")
    fig.tight_layout()
    fig.savefig(out, dpi=150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results/default")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--crystals", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[888, 1212, 2024])
    parser.add_argument("--objective", default="classification")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--tests", nargs="+", default=TESTS_20NM)
    parser.add_argument("--name", default="learning_curve")
    args = parser.parse_args()

    import torch

    from polarmap.config import load_config

    config = load_config(args.config)
    if max(args.crystals) > config["datasets"]["training"]["crystals"]:
        sys.exit(f"{args.config}: datasets.training.crystals is {config['datasets']['training']['crystals']}; "
                 f"--crystals {max(args.crystals)} needs that many simulated (set it and rerun the study's training sets)")
    work = args.results / "learning_curve"
    rows = []
    for crystals in args.crystals:
        for seed in args.seeds:
            trained = train_one(args.results, work, config, crystals, seed, args.objective, args.max_epochs, args.patience)
            record = trained["record"]
            row = {"crystals": crystals, "seed": seed, "epochs_run": record["epochs_run"], "best_epoch": record["best_epoch"],
                   "converged": record["converged"], "validation_accuracy": record["validation_accuracy"],
                   "training_patterns": record["patterns"]["train"],
                   "patterns_seen": record["patterns"]["train"] * record["best_epoch"],  # up to the kept epoch
                   **evaluate(trained["folder"], args.results, args.tests),
                   "training_seconds": record["wall_seconds"]}
            rows.append(row)
            print(f"{crystals} crystals, seed {seed}: {100 * row['accuracy']:.1f} % ({row['epochs_run']} epochs, "
                  f"{'converged' if row['converged'] else 'capped'})", flush=True)

    (HERE / "out").mkdir(exist_ok=True)  # figures are made, not kept in git
    figure(rows, args.objective, HERE / f"out/{args.name}.png")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    (HERE / f"{args.name}.json").write_text(json.dumps({"machine": machine, "results": str(args.results), "objective": args.objective,
                                                        "tests": args.tests, "rows": rows}, indent=1) + "\n")
    lines = [f"Learning curve ({machine}; {args.results}, Conv {args.objective}, up to {args.max_epochs} epochs, patience {args.patience}; "
             f"independent 20 nm tests {', '.join(args.tests)}). Accuracy in percent, mean ± std over seeds {', '.join(map(str, args.seeds))}.",
             "", "| crystals per class | training patterns | epochs (kept) | patterns seen to the kept epoch | converged | validation | "
             "tests, all positions | near Nb | near A | between |", "|---|---|---|---|---|---|---|---|---|---|"]
    def cell(values):
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"

    for crystals in args.crystals:
        mine = [r for r in rows if r["crystals"] == crystals]
        epochs = ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in mine)
        regions = " | ".join(cell([r["regions"][region] for r in mine]) for region in ("near Nb", "near A", "between"))
        seen = np.mean([r["patterns_seen"] for r in mine])
        lines.append(f"| {crystals} | {mine[0]['training_patterns']} | {epochs} | {seen:.0f} | {sum(r['converged'] for r in mine)} of {len(mine)} | "
                     f"{cell([r['validation_accuracy'] for r in mine])} | {cell([r['accuracy'] for r in mine])} | {regions} |")
    lines += ["", f"Figure (accuracy against crystals; accuracy by probe position at the largest): benchmarks/out/{args.name}.png."]
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
