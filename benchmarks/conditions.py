"""Specimen tilt and dose per unit cell, for the methods that need no training (issue 28, point 3):

    python benchmarks/conditions.py [--name conditions]

A 4x4x50-cell crystal (20 nm, K/Na at random, one frozen-phonon configuration) of LU (Nb along
135 degrees) and the same crystal unpolarized (Nb centred), simulated with abTEM (PRISM, 128 px
patterns at 3.15 mrad/px, 32x32 positions over the period, 8 per cell), tilted 0, 2, 5 and 10 mrad
along the polarization and across it (the unpolarized one along LU's direction;
`structures.apply_mistilt`), and, untilted, at 1e3 to 1e6
electrons per pattern (Poisson). Per-cell methods: column fitting on the virtual ADF and on iDPC
with the known supercell (`columns.fit_cells`), and on the ADF of the lattice found
(`lattice.find_lattice`, `cell_vectors`, the map's two-sigma and residual rules; the period tiled
2x2, as a larger scan of the same crystal). Per setting and method: cells right (LU; for the
unpolarized crystal: cells whose vector is below 5 pm, none is "right"), the mean vector (pm,
(u, v) in the crystal's axes), and its change from the untilted, noiseless crystal's. A tilt
"confuses" a method where the unpolarized crystal's mean vector exceeds 5 pm or LU's cells fall
below 90 % right. Learned models (per pattern, the unit-cell model) are in the workflow's sweeps
(`datasets.sweeps`); they are not run here. Writes benchmarks/<name>.md and .json.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CELLS, SCAN, PX_PER_CELL = (4, 4, 50), 32, 8
TILTS_MRAD = (0.0, 2.0, 5.0, 10.0)
DOSES = (1e3, 1e4, 1e5, 1e6)
# LU: 135 degrees counter-clockwise from +x, in (x, y); across it: 45 degrees
ALONG, ACROSS = np.array([-1.0, 1.0]) / np.sqrt(2), np.array([1.0, 1.0]) / np.sqrt(2)
POLAR_PM = 5.0  # a mean vector above this is a polarization


def simulate(class_name, tilt_xy_mrad, seed=11):
    from polarmap.simulation import SimulationSettings, _Simulator, detector_mrad_per_px, geometry
    from polarmap.structures import StructureSettings, apply_mistilt, build_supercell

    atoms = build_supercell(CELLS, class_name, StructureSettings(a_site_order="random", a_site_seed=seed))
    if np.any(tilt_xy_mrad):
        atoms = apply_mistilt(atoms, tilt_xy_mrad)
    settings = SimulationSettings(method="prism", gpts_per_cell=64, scan_px=SCAN, rows_per_block=SCAN, frozen_phonon_configs=1, frozen_phonon_seed=seed)
    geo = geometry(atoms, settings)
    step = geo.extent[0] / SCAN
    patterns = _Simulator(atoms, geo, settings).rows(0, SCAN, (step, step))
    return patterns, {"mrad": detector_mrad_per_px(geo.a_pc, settings), "step": step}


def per_cell(patterns, sampling) -> dict:
    """Each method's cells: the fraction in each class, the mean vector (pm, (u, v)), and
    the fraction of cells answered."""
    from polarmap.columns import fit_cells
    from polarmap.imaging import scan_virtual_images
    from polarmap.lattice import cell_vectors, find_lattice

    attrs = {"name": "conditions", "supercell": "x".join(map(str, CELLS)), "detector_mrad_per_px": sampling["mrad"], "semiangle_mrad": 24.0}
    images = scan_virtual_images(patterns, attrs, "conditions")
    out = {}
    for image_name in ("adf", "idpc"):
        cells = fit_cells(images[image_name], PX_PER_CELL, sampling["step"], periodic=True)
        vectors = cells.displacement_angstrom[:, ::-1] * 100  # (row, col) -> (u along +x, v along +y), pm
        out[f"column_fit_{image_name}"] = {"classes": cells.classes.tolist(), "vectors_pm": vectors.tolist()}
    tiled = np.tile(images["adf"], (2, 2))
    found = cell_vectors(tiled, find_lattice(tiled), sampling["step"])
    out["found_lattice_adf"] = {"classes": found.shown_classes.tolist(), "vectors_pm": found.crystal_pm.tolist()}
    return out


def summary(cells: dict, class_index: int | None) -> dict:
    rows = {}
    for method, result in cells.items():
        classes, vectors = np.array(result["classes"]), np.array(result["vectors_pm"]).reshape(-1, 2)
        mean = vectors.mean(axis=0) if len(vectors) else np.full(2, np.nan)
        row = {"cells": len(classes), "mean_vector_pm": mean.round(2).tolist(), "mean_length_pm": float(np.hypot(*mean))}
        if class_index is None:
            row["polar_cells"] = float((np.hypot(*vectors.T) > POLAR_PM).mean()) if len(vectors) else float("nan")
        else:
            row["right"] = float((classes == class_index).mean()) if len(classes) else 0.0
        rows[method] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="conditions")
    args = parser.parse_args()
    from polarmap.classes import class_index

    started = time.perf_counter()
    lu = class_index("LU")
    results = []
    for class_name in ("LU", None):
        for direction_name, direction in (("along", ALONG), ("across", ACROSS))[:2 if class_name else 1]:
            for tilt in TILTS_MRAD:
                if tilt == 0 and direction_name == "across":
                    continue
                t = time.perf_counter()
                patterns, sampling = simulate(class_name, tuple(tilt * direction))
                cells = per_cell(patterns, sampling)
                row = {"crystal": class_name or "unpolarized", "tilt_mrad": tilt, "direction": direction_name if tilt else "-", "dose": None,
                       "seconds": round(time.perf_counter() - t, 1), "methods": summary(cells, lu if class_name else None)}
                results.append(row)
                print(json.dumps(row), flush=True)
                if tilt == 0 and class_name:
                    rng = np.random.default_rng(0)
                    for dose in DOSES:
                        counts = rng.poisson(patterns / patterns.sum(axis=(-2, -1), keepdims=True) * dose).astype(np.float32)
                        row = {"crystal": "LU", "tilt_mrad": 0.0, "direction": "-", "dose": dose, "methods": summary(per_cell(counts, sampling), lu)}
                        results.append(row)
                        print(json.dumps(row), flush=True)
    report(results, args.name, time.perf_counter() - started)


def report(results, name, seconds):
    methods = list(results[0]["methods"])
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    lines = [f"Tilt and dose per unit cell (`python benchmarks/conditions.py`; {machine}; {seconds / 60:.0f} min).", "",
             "4x4x50 cells (20 nm), K/Na at random, 1 phonon configuration, 8 scan px per cell. Right: cells in LU's bin (column fitting's "
             "own class; the lattice found's after its two-sigma and residual rules, unknown counted as not right). Unpolarized: the share "
             f"of cells whose vector exceeds {POLAR_PM:g} pm. Mean vector (u, v) in pm, +u along +x, +v along +y.", "",
             "| crystal | tilt (mrad) | direction | electrons/pattern | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for r in results:
        cells = []
        for method in methods:
            m = r["methods"][method]
            share = m["right"] if "right" in m else m["polar_cells"]
            cells.append(f"{100 * share:.0f} %, ({m['mean_vector_pm'][0]:.1f}, {m['mean_vector_pm'][1]:.1f})")
        dose = "noiseless" if r["dose"] is None else f"{r['dose']:.0e}"
        lines.append(f"| {r['crystal']} | {r['tilt_mrad']:g} | {r['direction']} | {dose} | " + " | ".join(cells) + " |")
    (HERE / f"{name}.md").write_text("\n".join(lines) + "\n")
    (HERE / f"{name}.json").write_text(json.dumps({"machine": machine, "seconds": seconds, "results": results}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
