"""Figures of the evaluation, each written as PNG and PDF: prediction distributions (paper Fig. 3,
4), class maps on the scan grid (Fig. 5, 6), the CoM beam-shift field over a unit cell (Fig. 7),
defect maps (Fig. 8), accuracy against a swept knob, and the CoM and accuracy against specimen
thickness (issue 9). One colour per class in every figure; the
scan grid is drawn with +row up, as the classes are defined."""

from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from polarmap.atomic import read_npz, replace_atomically, write_text_atomically  # noqa: E402
from polarmap.classes import CLASS_NAMES, majority_class  # noqa: E402

# colour-blind-safe (Okabe-Ito plus two), neighbouring directions in distinct hues
CLASS_COLOURS = ("#0072B2", "#56B4E9", "#009E73", "#F0E442", "#E69F00", "#D55E00", "#CC79A7", "#7F3C8D")
CLASS_CMAP = ListedColormap(CLASS_COLOURS, name="polarization_classes")
UNKNOWN_GREY = "0.75"  # a pattern out of the model's training distribution, or without an answer
UNKNOWN_GREY_CMAP = CLASS_CMAP.with_extremes(under=UNKNOWN_GREY)
ELEMENT_COLOURS = {"K": "#9467bd", "Na": "#e7ba52", "Nb": "#2ca02c", "O": "#d62728"}


def save(fig, out):
    """`out` without suffix -> out.png and out.pdf, each written whole or not at all. Returns
    the figure (closed for pyplot, still inspectable)."""
    out = Path(out)
    for suffix in (".png", ".pdf"):
        replace_atomically(out.with_name(out.name + suffix), lambda tmp: fig.savefig(tmp, dpi=150, bbox_inches="tight"), suffix)
    plt.close(fig)
    return fig


def read_predictions(path) -> dict:
    return read_npz(path, "predictions file", "rerun the predict rule (polarmap predict-many)")


def class_legend(ax, **kwargs) -> None:
    handles = [Patch(color=c, label=n) for n, c in zip(CLASS_NAMES, CLASS_COLOURS)] + [Patch(color=UNKNOWN_GREY, label="unknown")]
    ax.legend(handles=handles, **kwargs)


def _panel_grid(n: int, columns: int, width: float, height: float):
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, min(n, columns), figsize=(width * min(n, columns), height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def prediction_distributions(fractions: dict, title: str, out):
    """Fraction of patterns predicted as each class, one panel per data set, one bar group per
    model: `fractions[dataset][model] = (mean (8,), std (8,))` over seeds."""
    datasets = list(fractions)
    fig, axes = _panel_grid(len(datasets), 3, 5.2, 3.0)
    x = np.arange(len(CLASS_NAMES))
    for ax, dataset in zip(axes, datasets):
        models = list(fractions[dataset])
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            mean, std = fractions[dataset][model]
            ax.bar(x - 0.4 + (i + 0.5) * width, mean, width, yerr=std, capsize=1.5, label=model,
                   color=plt.cm.tab20(i % 20), error_kw={"lw": 0.6})
        ax.set_xticks(x, CLASS_NAMES)
        for tick, colour in zip(ax.get_xticklabels(), CLASS_COLOURS):
            tick.set_color(colour)
            tick.set_fontweight("bold")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of patterns")
        ax.set_title(dataset, fontsize=10)
    axes[0].legend(fontsize=6, ncol=2, loc="upper right")
    fig.suptitle(title)
    return save(fig, out)


def majority_vote(grids: list[np.ndarray]) -> np.ndarray:
    """Per-pattern majority class over seeds; ties go to the lowest class index; -1 (unknown)
    where no seed answered."""
    stacked = np.stack(grids).astype(np.int64)
    return majority_class(np.stack([(stacked == k).sum(axis=0) for k in range(len(CLASS_NAMES))], axis=-1))


def _map_grid(maps: dict, panel_in: float, title: str, out, panel_title, decorate=None):
    """Class maps in a grid, one row per model and one column per inner key of
    `maps[model][key]`; `panel_title(model, key)` names a panel (None: no title) and
    `decorate(ax, model, key)` draws on it."""
    models = list(maps)
    columns = list(dict.fromkeys(c for m in models for c in maps[m]))
    fig, axes = plt.subplots(len(models), len(columns), figsize=(panel_in * len(columns) + 1.5, panel_in * len(models) + 0.8), squeeze=False)
    for i, model in enumerate(models):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if column not in maps[model]:
                ax.set_visible(False)
                continue
            if maps[model][column] is None:  # no result to show: the model did not learn
                ax.set_facecolor("0.8")
                ax.text(0.5, 0.5, "did not\nlearn", ha="center", va="center", fontsize=8, transform=ax.transAxes)
                if j == 0:
                    ax.set_ylabel(model, fontsize=7)
                continue
            ax.imshow(maps[model][column], cmap=UNKNOWN_GREY_CMAP, vmin=-0.5, vmax=len(CLASS_NAMES) - 0.5, origin="lower", interpolation="nearest")
            if (text := panel_title(model, column)) is not None:
                ax.set_title(text, fontsize=8)
            if decorate is not None:
                decorate(ax, model, column)
            if j == 0:
                ax.set_ylabel(model, fontsize=7)
    class_legend(fig, loc="lower center", ncol=len(CLASS_NAMES) + 1, fontsize=7, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    return save(fig, out)


def class_maps(maps: dict, title: str, out):
    """Class maps on the scan grid: `maps[model][dataset]` = (scan_rows, scan_cols) classes."""
    first = next(iter(maps))
    return _map_grid(maps, 1.7, title, out, lambda model, dataset: dataset if model == first else None)


def com_field(beam_shift: np.ndarray, scan_step: float, cell: float, atoms, title: str, out):
    """The beam-shift vector (row, col) at each scan position of the first unit cell, with the
    projected atom columns of `atoms` (ase) overlaid; axes in Angstrom, +row up."""
    n = max(1, int(round(cell / scan_step)))
    field = beam_shift[:n, :n]
    rows, cols = np.mgrid[:n, :n] * scan_step
    fig, ax = plt.subplots(figsize=(5.2, 5))
    xy = atoms.positions[:, :2]
    inside = (xy[:, 0] < n * scan_step) & (xy[:, 1] < n * scan_step)
    for symbol, colour in ELEMENT_COLOURS.items():
        mine = inside & (np.array(atoms.get_chemical_symbols()) == symbol)
        if mine.any():
            ax.scatter(xy[mine, 0], xy[mine, 1], s=160, color=colour, alpha=0.35, label=symbol, edgecolors="none")
    magnitude = np.hypot(field[..., 0], field[..., 1])
    quiver = ax.quiver(cols, rows, field[..., 1], field[..., 0], magnitude, cmap="viridis", pivot="middle")
    fig.colorbar(quiver, ax=ax, label="beam shift (detector px)", shrink=0.8)
    ax.set_xlabel("x = col (Angstrom)")
    ax.set_ylabel("y = row (Angstrom)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=10)
    return save(fig, out)


def virtual_images(images: dict, title: str, out):
    """ADF, BF, ABF, iDPC and dDPC of one scan, and its CoM field as arrows over the ADF image,
    drawn as the scan was recorded (row 0 at the bottom, +row up)."""
    fig, axes = _panel_grid(6, 3, 3.4, 3.4)
    axes = list(axes)
    panels = [("adf", "ADF"), ("bf", "BF"), ("abf", "ABF"), ("idpc", "iDPC"), ("ddpc", "dDPC")]
    for ax, (key, label) in zip(axes, panels):
        ax.imshow(images[key], origin="lower", cmap="gray")
        ax.set_title(label)
    ax = axes[5]
    ax.imshow(images["adf"], origin="lower", cmap="gray")
    field = images["com_mrad"]
    ax.quiver(field[..., 1], field[..., 0], color="#E69F00", angles="xy")
    ax.set_title("CoM field on ADF")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title)
    return save(fig, out)


def defect_maps(maps: dict, masks: dict, scores: dict, title: str, out):
    """Class maps with the defect region outlined, one row per model and one column per
    configuration: `maps[model][configuration]`, `masks[configuration]`, `scores` the ROC AUC."""
    def outline(ax, model, configuration):
        ax.contour(masks[configuration].astype(float), levels=[0.5], colors="white", linewidths=1.2, origin="lower")

    return _map_grid(maps, 2.6, title, out, lambda model, c: f"{c}\nAUC {scores[model][c]:.2f}", outline)


def accuracy_against_knob(panels: dict, knob: str, title: str, out, log_x: bool = False):
    """`panels[name][model] = (values, mean accuracies, std)`: per panel (per pattern, per unit
    cell), one line with error bars per model."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, points) in zip(axes.flat, panels.items()):
        for i, (model, (values, mean, std)) in enumerate(points.items()):
            order = np.argsort(values)
            ax.errorbar(np.asarray(values)[order], np.asarray(mean)[order], yerr=np.asarray(std)[order], marker="o", ms=3,
                        capsize=2, label=model, color=plt.cm.tab20(i % 20))
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(knob)
        ax.set_ylabel(f"accuracy {name}")
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(1 / len(CLASS_NAMES), color="grey", lw=0.8, ls=":", label="chance")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    return save(fig, out)


# ---- from the evaluation's files ---------------------------------------------------------------

def _family_labels(results) -> dict[str, str]:
    return dict(zip(results["family"], results["label"]))


def distributions_from_results(results, configuration: str, out):
    """Fig. 3/4 for one configuration from results.tsv (pandas): class fractions per data set and
    model family, mean and std over the seeds that learned."""
    from polarmap.tables import COUNT_COLUMNS, SYNTHETIC_TEST
    from polarmap.predictors import is_per_cell, is_trained

    paper_models = (results["configuration"] == configuration) & (results["regime"] == "paper")
    baselines = results["predictor"].map(lambda name: not is_trained(name) and not is_per_cell(name)).astype(bool)  # the CoM baseline
    learned = results["learned"].astype(bool)  # a model that did not learn is no result
    mine = results[(paper_models | baselines) & (results["dataset"] != SYNTHETIC_TEST) & learned]
    if mine.empty:
        raise ValueError(f"no predictions for configuration {configuration!r}")
    labels = _family_labels(mine)
    fractions: dict = {}
    for (dataset_label, family), group in mine.groupby(["dataset_label", "family"], sort=False):
        counts = group[COUNT_COLUMNS].to_numpy(dtype=float)
        share = counts / counts.sum(axis=1, keepdims=True)
        fractions.setdefault(dataset_label, {})[labels[family]] = (share.mean(axis=0), share.std(axis=0))
    return prediction_distributions(fractions, f"Predicted classes, {configuration} configuration (mean ± std over seeds)", out)


def maps_from_predictions(prediction_files, configuration: str, out, unlearned: set[str] = frozenset()):
    """Fig. 5/6 for one configuration: per model family and data set, the per-pattern majority
    vote over the seeds that learned of the predictions.npz files; a family none of whose seeds
    learned (named in `unlearned`) gets a grey "did not learn" panel."""
    from polarmap.predictors import describe

    grids: dict = {}
    for path in map(Path, prediction_files):
        info = describe(path.stem)
        if info.configuration not in (configuration, "") or info.regime != "paper":
            continue
        for name, grid in read_predictions(path).items():
            if not name.endswith((".angle", ".ood", ".confidence")):
                seeds = grids.setdefault(info.label, {}).setdefault(name, [])
                if path.stem not in unlearned:
                    seeds.append(grid)
    if not grids:
        raise ValueError(f"no prediction grids for configuration {configuration!r}")
    maps = {model: {dataset: majority_vote(g) if g else None for dataset, g in sets.items()} for model, sets in grids.items()}
    return class_maps(maps, f"Class maps, {configuration} configuration (majority vote over seeds)", out)


def com_field_from_files(preprocessed, structure, out):
    """Fig. 7: the measured beam-shift field of a preprocessed simulated set over its first unit
    cell, with the projected structure it was simulated from."""
    from polarmap import io
    from polarmap.structures import read_structure

    with io.open_dataset(preprocessed) as f:
        attrs = io.read_attrs(f)
        beam_shift = f["beam_shift"][()]
    from polarmap.dataset_kind import supercell_repeats

    atoms = read_structure(structure)
    repeats = supercell_repeats(attrs)
    cell = atoms.cell.lengths()[0] / repeats[0]
    return com_field(beam_shift, float(attrs["scan_step_angstrom"]), cell, atoms,
                     f"Beam shift over one unit cell, {attrs['name']} ({'/'.join(attrs['classes'])})", out)


def _accuracy_points(results, values: dict, column: str = "accuracy") -> dict:
    """Per model family: (knob values, mean `column`, std over seeds) on the data sets of `values`
    (data set -> knob value), over the seeds that learned (a model that did not learn is no
    result); families without a finite value left out."""
    mine = results[results["dataset"].isin(list(values)) & results["learned"].astype(bool) & np.isfinite(results[column].astype(float))]
    points = {}
    for family, group in mine.groupby("family", sort=False):
        stats = group.groupby("dataset")[column].agg(["mean", lambda a: a.std(ddof=0)])
        configuration = group["configuration"].iloc[0]
        label = group["label"].iloc[0] + (f" [{configuration}]" if configuration else "")
        points[label] = ([values[d] for d in stats.index], stats.iloc[:, 0].to_numpy(), stats.iloc[:, 1].to_numpy())
    return points


def sweep_from_results(results, sweep: list[dict], knob: str, out):
    """Accuracy against a swept knob, per pattern and (where the sets' unit cells are known) per
    unit cell: `sweep` lists {dataset, value}; one line per model family (all configurations),
    mean and std over seeds."""
    values = {point["dataset"]: point["value"] for point in sweep}
    panels = {"per pattern": _accuracy_points(results, values)}
    if not panels["per pattern"]:
        raise ValueError(f"no predictions for the sweep's data sets ({', '.join(values)})")
    if "cell_accuracy" in results and (per_cell := _accuracy_points(results, values, "cell_accuracy")):
        panels["per unit cell"] = per_cell
    spread = max(values.values()) / max(min(values.values()), 1e-12)
    return accuracy_against_knob(panels, knob, f"Accuracy against {knob}", out, log_x=min(values.values()) > 0 and spread >= 100)


def nb_column_com(com: np.ndarray, detector_px: int, scan_step: float, atoms) -> np.ndarray:
    """CoM (row, col) in detector px from the optical axis (pixel n // 2) at the scan position
    nearest an Nb column of `atoms`, and the mean over the scan: (2, 2) = [Nb column, scan mean]."""
    nb = atoms.positions[np.array(atoms.get_chemical_symbols()) == "Nb", :2]  # (x, y) = (col, row) in Angstrom
    grid = nb / scan_step
    nearest = np.rint(grid)
    best = int(np.argmin(np.abs(grid - nearest).sum(axis=1)))
    col, row = (int(v) % n for v, n in zip(nearest[best], com.shape[1::-1]))
    centred = com - detector_px // 2
    return np.stack([centred[row, col], centred.reshape(-1, 2).mean(axis=0)])


def thickness_figure(com_points: dict, accuracy_points: dict, direction_deg: float, title: str, out):
    """Left: the CoM at the Nb column and the scan-mean CoM along the class direction against
    thickness (`com_points[thickness_nm] = (2, 2)` from `nb_column_com`); right: accuracy against
    thickness per model (`accuracy_points` as in `accuracy_against_knob`)."""
    theta = np.deg2rad(direction_deg)
    unit = np.array([np.sin(theta), np.cos(theta)])  # (row, col), +row up
    thickness = np.array(sorted(com_points))
    along = np.array([com_points[t] @ unit for t in thickness])  # (n, 2): Nb column, scan mean
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    left.plot(thickness, along[:, 0], "o-", color="#2ca02c", label="CoM at the Nb column")
    left.plot(thickness, along[:, 1], "s--", color="#555555", label="scan-mean CoM")
    left.axhline(0, color="grey", lw=0.8)
    left.set_xlabel("thickness (nm)")
    left.set_ylabel(f"CoM along the class direction ({direction_deg:g} deg), detector px")
    left.legend(fontsize=7)
    for i, (model, (values, mean, std)) in enumerate(accuracy_points.items()):
        order = np.argsort(values)
        right.errorbar(np.asarray(values)[order], np.asarray(mean)[order], yerr=np.asarray(std)[order], marker="o", ms=3,
                       capsize=2, label=model, color=plt.cm.tab20(i % 20), ls="--" if model.startswith("CoM") else "-")
    right.axhline(1 / len(CLASS_NAMES), color="grey", lw=0.8, ls=":", label="chance")
    right.set_xlabel("thickness (nm)")
    right.set_ylabel("accuracy (mean ± std over seeds)")
    right.set_ylim(-0.02, 1.02)
    right.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=10)
    return save(fig, out)


def thickness_from_files(results, preprocessed, structures, out):
    """The thickness-sweep figure from the sweep's preprocessed sets (/com), the structures they
    were simulated from and results.tsv (pandas)."""
    from polarmap import io
    from polarmap.classes import class_index
    from polarmap.structures import read_structure

    if len(preprocessed) != len(structures):
        raise ValueError(f"{len(preprocessed)} preprocessed sets but {len(structures)} structures: give one structure per set")
    com_points, thickness, classes = {}, {}, set()
    for path, structure in zip(preprocessed, structures):
        with io.open_dataset(path) as f:
            attrs = io.read_attrs(f)
            com = f["com"][()]
        simulation = attrs["simulation_settings"]  # read_attrs decodes the JSON
        detector_px = simulation["gpts_per_cell"] * simulation["probe_window_cells"]
        com_points[float(attrs["thickness_nm"])] = nb_column_com(com, detector_px, float(attrs["scan_step_angstrom"]), read_structure(structure))
        thickness[attrs["name"]] = float(attrs["thickness_nm"])
        classes.add(attrs["polarization"])
    if len(classes) != 1:
        raise ValueError(f"a thickness sweep has one polarization; these sets have {', '.join(sorted(classes))}")
    polarization = classes.pop()
    if not (accuracy := _accuracy_points(results, thickness)):
        raise ValueError(f"no predictions for the sweep's data sets ({', '.join(thickness)})")
    return thickness_figure(com_points, accuracy, 45.0 * class_index(polarization),
                            f"Thickness sweep, {polarization}: which signal survives", out)


def defect_study(prediction_files, dataset, out_table, out_figure):
    """Fig. 8 and its score: per predictor, the ROC AUC of the local disagreement score against
    the set's /defect_mask (a TSV, one row per predictor); the class maps (majority over seeds)
    with the defect region outlined, one row per model, one column per configuration."""
    from polarmap import io
    from polarmap.defects import localisation_auc
    from polarmap.predictors import describe

    with io.open_dataset(dataset) as f:
        name = io.read_attrs(f)["name"]
        if "defect_mask" not in f:
            raise ValueError(f"{dataset}: no /defect_mask; simulate the defect set with polarmap (datasets.defect)")
        mask = f["defect_mask"][()]
    rows, grids = [], {}
    for path in map(Path, prediction_files):
        info = asdict(describe(path.stem))
        data = read_predictions(path)
        if name not in data:
            raise ValueError(f"{path}: no predictions for {name}; rerun the predict rule")
        grid = data[name].astype(np.int64)
        configuration = info["configuration"] or "no training"
        rows.append({**info, "configuration": configuration, "auc": localisation_auc(grid, mask)})
        grids.setdefault(info["label"], {}).setdefault(configuration, []).append(grid)
    lines = ["predictor\tmodel\tconfiguration\tseed\tlocalisation_auc"]
    lines += [f"{Path(p).stem}\t{r['label']}\t{r['configuration']}\t{r['seed']}\t{r['auc']:.4f}" for p, r in zip(prediction_files, rows)]
    write_text_atomically(out_table, "\n".join(lines) + "\n")
    maps = {model: {c: majority_vote(g) for c, g in by_configuration.items()} for model, by_configuration in grids.items()}
    scores = {model: {c: float(np.mean([r["auc"] for r in rows if r["label"] == model and r["configuration"] == c])) for c in by_configuration}
              for model, by_configuration in grids.items()}
    masks = {c: mask for by_configuration in grids.values() for c in by_configuration}
    return defect_maps(maps, masks, scores, f"Defect maps, {name} (white: within the defect radius; AUC of the errors' localisation)", out_figure)


# ---- per unit cell -----------------------------------------------------------------------------

def cell_panels(adf: np.ndarray, centres_px: np.ndarray, arrows: dict, heats: dict, title: str, out):
    """Per method (column), top: one arrow per unit cell on the virtual ADF image, coloured by class
    (`arrows[method] = angles (n_cells,)` in radians, NaN: no answer; None: did not learn); bottom:
    per-pattern accuracy against the probe's position in the cell (`heats[method]`, (bins, bins)
    over the cell, Nb at the centre), pooled over the data set's cells."""
    from polarmap.classes import angle_to_class

    methods = list(arrows)
    fig, axes = plt.subplots(2, len(methods), figsize=(2.3 * len(methods), 4.8), squeeze=False)
    shown = None
    for i, method in enumerate(methods):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(adf, origin="lower", cmap="gray")
        top.set_title(method, fontsize=7)
        angles = arrows[method]
        if angles is None:
            top.text(0.5, 0.5, "did not learn", transform=top.transAxes, ha="center", va="center", color="white", fontsize=8)
        else:
            answered = np.isfinite(angles)
            colours = [CLASS_COLOURS[k] for k in angle_to_class(angles[answered])]
            top.quiver(centres_px[answered, 1], centres_px[answered, 0], np.cos(angles[answered]), np.sin(angles[answered]),
                       color=colours, angles="xy", pivot="middle")
            top.plot(centres_px[~answered, 1], centres_px[~answered, 0], "x", color="grey", ms=4)
        heat = heats.get(method)
        if heat is not None:
            shown = bottom.imshow(heat, origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=1, cmap="viridis")
            bottom.plot([0.5], [0.5], "+", color="white", ms=6)  # the Nb column's site
        else:
            bottom.set_visible(False)
        for ax in (top, bottom):
            ax.set_xticks([]), ax.set_yticks([])
    axes[1, 0].set_ylabel("position in cell (row)", fontsize=7)
    if shown is not None:  # in an axis of its own, so that both rows keep one width per method
        fig.subplots_adjust(right=0.92)
        fig.colorbar(shown, cax=fig.add_axes((0.94, 0.12, 0.01, 0.33)), label="accuracy")
    fig.suptitle(title, fontsize=9)
    return save(fig, out)


def cell_arrows(classes: np.ndarray, cell_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One arrow per unit cell (cells of cell_px scan steps from the scan's first position): the
    mean of the class directions of the cell's known patterns, as (centres (n, 2) in scan steps,
    vectors (n, 2) as (row, col), majority class (n,)); a cell without a known pattern has none."""
    from polarmap.classes import class_direction

    directions = np.array([class_direction(name)[::-1] for name in CLASS_NAMES])  # (row, col), +row up
    n_rows, n_cols = (int(np.ceil(n / cell_px)) for n in classes.shape)
    centres, vectors, majority = [], [], []
    for i in range(n_rows):
        for j in range(n_cols):
            block = classes[int(round(i * cell_px)):int(round((i + 1) * cell_px)), int(round(j * cell_px)):int(round((j + 1) * cell_px))]
            known = block[block >= 0]
            if known.size == 0:
                continue
            centres.append(((i + 0.5) * cell_px - 0.5, (j + 0.5) * cell_px - 0.5))
            vectors.append(directions[known].mean(axis=0))
            majority.append(np.bincount(known, minlength=len(CLASS_NAMES)).argmax())
    return np.array(centres).reshape(-1, 2), np.array(vectors).reshape(-1, 2), np.array(majority, dtype=int)


def acquisition_map(classes: np.ndarray, adf: np.ndarray, field_mrad: np.ndarray, cell_px: float | None, title: str, out):
    """The map of one acquisition: classes (grey: unknown), one arrow per unit cell over the
    virtual ADF image (none without a scan step), and the CoM field as colour (hue: direction,
    brightness: magnitude). +row up, as the microscope shows the scan."""
    from matplotlib.colors import hsv_to_rgb

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), layout="constrained")
    axes[0].imshow(classes, cmap=UNKNOWN_GREY_CMAP, vmin=-0.5, vmax=len(CLASS_NAMES) - 0.5, origin="lower", interpolation="nearest")
    axes[0].set_title(f"classes ({100 * (classes < 0).mean():.0f} % unknown)")
    class_legend(axes[0], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=5, fontsize=7)
    axes[1].imshow(adf, origin="lower", cmap="gray")
    if cell_px is not None and cell_px >= 1:
        centres, vectors, majority = cell_arrows(classes, cell_px)
        if len(centres):
            axes[1].quiver(centres[:, 1], centres[:, 0], vectors[:, 1], vectors[:, 0], color=[CLASS_COLOURS[k] for k in majority],
                           angles="xy", scale_units="xy", scale=1 / (0.45 * cell_px), width=0.008, pivot="middle")
        axes[1].set_title(f"ADF, an arrow per cell ({cell_px:.1f} steps)")
    else:
        axes[1].set_title("ADF (no scan step: no arrows per cell)")
    magnitude = np.hypot(field_mrad[..., 0], field_mrad[..., 1])
    top = float(np.percentile(magnitude, 99)) or 1.0
    hue = (np.arctan2(field_mrad[..., 0], field_mrad[..., 1]) / (2 * np.pi)) % 1.0
    axes[2].imshow(hsv_to_rgb(np.stack([hue, np.ones_like(hue), np.clip(magnitude / top, 0, 1)], axis=-1)), origin="lower", interpolation="nearest")
    axes[2].set_title(f"CoM field (hue: direction; full brightness {top:.2f} mrad)")
    for ax in axes:
        ax.set_xlabel("scan column")
    axes[0].set_ylabel("scan row (up)")
    fig.suptitle(title, y=1.04)
    return save(fig, out)


def cell_map(image: np.ndarray, lattice, cells, image_name: str, title: str, out, per_pattern: np.ndarray | None = None):
    """The per-cell map of a scan: one arrow per unit cell at its Nb column over the image the
    lattice was found in, coloured by class (grey: unknown), drawn longer than life by a factor
    stated with a scale arrow in pm; the lattice found (its A sites as dots, its two vectors from
    the origin); a colour wheel of the classes. With `per_pattern` (a model's classes per scan
    position), a second panel shows them. +row up, as the microscope shows the scan."""
    panels = 2 if per_pattern is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 6), layout="constrained", squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image, origin="lower", cmap="gray")
    corners = lattice.fractional(np.array([[0, 0], [0, image.shape[1] - 1], [image.shape[0] - 1, 0], [image.shape[0] - 1, image.shape[1] - 1]]))
    low, high = np.floor(corners.min(axis=0)) - 1, np.ceil(corners.max(axis=0)) + 1
    sites = lattice.position(np.stack(np.meshgrid(np.arange(low[0], high[0]) + 0.5, np.arange(low[1], high[1]) + 0.5, indexing="ij"), -1).reshape(-1, 2))
    inside = (sites >= -0.5).all(axis=1) & (sites <= np.array(image.shape) - 0.5).all(axis=1)
    ax.plot(sites[inside, 1], sites[inside, 0], ".", color="#F0E442", markersize=3, label="A sites (lattice found)")
    for vector, name in zip(lattice.vectors_px, ("a", "b")):
        ax.annotate("", xy=(lattice.origin_px[1] + vector[1], lattice.origin_px[0] + vector[0]), xytext=(lattice.origin_px[1], lattice.origin_px[0]),
                    arrowprops={"arrowstyle": "->", "color": "white", "lw": 1.2})
        ax.text(lattice.origin_px[1] + 1.1 * vector[1], lattice.origin_px[0] + 1.1 * vector[0], name, color="white", fontsize=9)
    # arrows 0.35 of a cell long for the largest displacement: a stated exaggeration, not a guess
    largest = float(np.percentile(np.hypot(*cells.scan_pm.T), 90)) or 1.0
    per_pm = 0.35 * lattice.cell_px / largest  # scan px per pm
    colours = [CLASS_COLOURS[k] if k >= 0 else UNKNOWN_GREY for k in cells.shown_classes]
    ax.quiver(cells.nb_px[:, 1], cells.nb_px[:, 0], cells.scan_pm[:, 1] * per_pm, cells.scan_pm[:, 0] * per_pm, color=colours,
              angles="xy", scale_units="xy", scale=1, width=0.007, pivot="middle")
    scale_pm = float(np.round(largest, -1) or np.round(largest, 1) or 1.0)
    ax.quiver([0.06 * image.shape[1]], [0.05 * image.shape[0]], [scale_pm * per_pm], [0], color="white", angles="xy", scale_units="xy", scale=1,
              width=0.007)
    ax.text(0.06 * image.shape[1], 0.09 * image.shape[0], f"{scale_pm:g} pm", color="white", fontsize=9)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(-0.5, image.shape[0] - 0.5)
    unknown = int((cells.shown_classes < 0).sum())
    ax.set_title(f"{image_name}: {len(cells.classes)} cells, {unknown} unknown (grey)")
    ax.set_xlabel("scan column")
    ax.set_ylabel("scan row (up)")
    wheel = ax.inset_axes([0.78, 0.78, 0.2, 0.2], projection="polar")
    wheel.bar(np.radians(np.arange(len(CLASS_NAMES)) * 45), 1, width=np.radians(45), color=CLASS_COLOURS, edgecolor="white")
    wheel.set_xticks(np.radians(np.arange(len(CLASS_NAMES)) * 45), CLASS_NAMES, fontsize=6)
    wheel.set_yticks([])
    if per_pattern is not None:
        axes[0, 1].imshow(per_pattern, cmap=UNKNOWN_GREY_CMAP, vmin=-0.5, vmax=len(CLASS_NAMES) - 0.5, origin="lower", interpolation="nearest")
        axes[0, 1].set_title(f"the model's classes per pattern ({100 * (per_pattern < 0).mean():.0f} % unknown)")
        class_legend(axes[0, 1], loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=5, fontsize=7)
    fig.suptitle(title)
    return save(fig, out)


def _family_title(info) -> str:
    """A model family's label, with its configuration where it has one (as the tables title it)."""
    return info.label + (f" [{info.configuration}]" if info.configuration else "")


def cells_from_files(virtual, prediction_files, metrics_files, dataset: str, out, unlearned: set[str] = frozenset()):
    """The per-unit-cell figure of one data set from its virtual images and every predictor's
    prediction grids (.npz) and metrics (.json): a learned family's cell answer is the majority
    vote of its patterns over the seeds that learned; column fitting's is the cell's fitted
    displacement; the heat maps are the mean over those seeds."""
    import json

    from polarmap.cells import cell_majority, scan_cells
    from polarmap.classes import CLASS_ANGLES_DEG
    from polarmap.imaging import read_virtual_images
    from polarmap.predictors import describe, measures_displacement

    images = read_virtual_images(virtual)
    adf, meta = images["adf"], images["meta"]
    cells = scan_cells(meta["dataset_attrs"], adf.shape)
    if cells is None:
        raise ValueError(f"{virtual}: the unit cells of {dataset} are not known (detector data): no per-cell figure")
    ids = cells.index(cells.positions(adf.shape)).ravel()
    centres = np.array([[(r + 0.5) * cells.cell_angstrom, (c + 0.5) * cells.cell_angstrom]
                        for r in range(cells.cells[0]) for c in range(cells.cells[1])])
    centres_px = np.mod(centres - np.asarray(cells.origin_angstrom), cells.cell_angstrom * np.array(cells.cells)) / cells.step_angstrom
    heats = {}
    for path in map(Path, metrics_files):
        if path.stem in unlearned:
            continue
        for entry in json.loads(path.read_text()):
            if entry["dataset"] == dataset and "position_accuracy" in entry:
                heats.setdefault(_family_title(describe(path.stem)), []).append(np.array(entry["position_accuracy"], dtype=float))
    votes: dict = {}
    for path in map(Path, prediction_files):
        label = _family_title(describe(path.stem))
        data = read_predictions(path)
        if dataset not in data:
            continue
        if measures_displacement(path.stem):
            angle = data[f"{dataset}.angle"].ravel()
            first = np.unique(ids, return_index=True)[1]  # every pattern of a cell carries its cell's angle
            votes[label] = angle[first].astype(np.float64)
        elif path.stem in unlearned:
            votes.setdefault(label, None)
        else:
            grids = votes.get(label) or []
            votes[label] = grids + [data[dataset].ravel()]
    arrows = {}
    for label, value in votes.items():
        if value is None or isinstance(value, np.ndarray):
            arrows[label] = value
        else:
            stacked = np.concatenate(value)
            majority = cell_majority(stacked[stacked >= 0], np.tile(ids, len(value))[stacked >= 0], cells.n_cells, len(CLASS_NAMES))
            arrows[label] = np.where(majority >= 0, np.deg2rad(np.take(CLASS_ANGLES_DEG, majority.clip(0))), np.nan)
    heat_means = {label: np.nanmean(np.stack(h), axis=0) for label, h in heats.items()}
    return cell_panels(adf, centres_px, arrows, heat_means, f"{dataset}: polarization per unit cell (top) and accuracy "
                       "against the probe position in the cell (bottom)", out)


def training_curves(curves: dict, out):
    """Validation accuracy against epoch, one panel per objective and one line per model family:
    `curves[objective][family label] = [(accuracies per epoch, best epoch (1-based), converged)]`,
    one entry per seed. The family's line is the mean over the seeds still training at an epoch,
    each seed's kept epoch a dot; a family with a seed stopped at its cap, still improving, is
    named "capped" and dashed."""
    from polarmap.models import LEARNED_MIN_VALIDATION_ACCURACY

    fig, axes = _panel_grid(len(curves), 3, 4.2, 3.4)
    for ax, (objective, families) in zip(axes, curves.items()):
        for colour, (label, seeds) in zip(plt.cm.tab10.colors * 3, families.items()):
            longest = max(len(accuracies) for accuracies, _, _ in seeds)
            padded = np.full((len(seeds), longest), np.nan)
            for row, (accuracies, best_epoch, _) in zip(padded, seeds):
                row[:len(accuracies)] = accuracies
                ax.plot(best_epoch, 100 * accuracies[best_epoch - 1], "o", color=colour, markersize=3)
            capped = not all(converged for _, _, converged in seeds)
            ax.plot(np.arange(1, longest + 1), 100 * np.nanmean(padded, axis=0), "--" if capped else "-", color=colour,
                    label=label + (" (capped)" if capped else ""))
        ax.axhline(100 / len(CLASS_NAMES), color="0.5", linestyle=":", linewidth=1)
        ax.axhline(100 * LEARNED_MIN_VALIDATION_ACCURACY, color="0.3", linestyle=":", linewidth=1)
        ax.set(title=objective, xlabel="epoch", ylabel="validation accuracy (%)", ylim=(0, 100))
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Validation accuracy per epoch (dots: each seed's kept epoch; dotted: chance and the learned threshold)", fontsize=9)
    return save(fig, out)


def training_curves_from_files(metrics_files, out):
    """`training_curves` from the models' metrics.csv, each with the record.json beside it."""
    import csv
    import json

    from polarmap.predictors import describe

    curves = {}
    for path in map(Path, metrics_files):
        info = describe(path.parent.name)
        with open(path, newline="") as f:
            accuracies = np.array([float(row["val_accuracy"]) for row in csv.DictReader(f)])
        record = json.loads((path.parent / "record.json").read_text())
        label = " ".join([info.label, info.configuration] + [info.regime] * (info.regime != "paper"))
        curves.setdefault(info.objective, {}).setdefault(label, []).append((accuracies, int(record["best_epoch"]), bool(record.get("converged", True))))
    if not curves:
        raise ValueError("no training curves to draw: give the models' metrics.csv files")
    return training_curves(curves, out)
