"""The per-cell map of simulated detector files, class by class (issue 24), and the calibration of
its residual rule on them:

    python benchmarks/cells_detector.py [--classes RM RU ...] [--name cells_detector]

For each of the 8 classes, an independent crystal (4x4x50 cells, 20 nm, K/Na at random, two
frozen-phonon configurations of its own seed) is simulated with abTEM (PRISM, 128 px patterns at
the default study's 3.15 mrad/px) at three scans of 48x48 positions, 8 per cell (0.5 A): upright,
turned 10 degrees against the crystal, and with a 3 % linear drift along the slow axis. Each scan
is written as a detector writes it, its detector turned a quarter and mirrored, a descan plane of
(1.0, -1.0) px plus 0.02 px per scan step, Poisson counts of 1e5 and of 1e4 electrons per
pattern: as a Merlin .mib/.hdr (upright, drift) or a plain HDF5 file (turned), and mapped with
`polarmap map FILE --mrad-per-px M --scan-step-angstrom S --pacbed LIBRARY` (no model). Per map:
cells found, right, unknown, wrong; the median error of the vector against column fitting on the
clean upright simulation's known cells; the lattice's angle against the planted one; the
thickness read from the PACBED; and each right cell's fit residual over the scan's median, whose
largest value lattice.RESIDUAL_FACTOR is set above. Writes benchmarks/<name>.md and .json.
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reading import write_mib

HERE = Path(__file__).resolve().parent
CELLS, SCAN, PX_PER_CELL = (4, 4, 50), 48, 8
SCANS = {"upright": (0.0, 0.0, "mib"), "turned 10 deg": (10.0, 0.0, "h5"), "drift 3 %": (0.0, 0.03, "mib")}
DOSES = (1e5, 1e4)
DESCAN_PX, DESCAN_PER_STEP = np.array([1.0, -1.0]), 0.02


def simulate(class_name: str, seed: int):
    """The crystal's patterns at each scan (48, 48, 128, 128), +row up, and what to compare with."""
    from polarmap.columns import fit_cells
    from polarmap.simulation import SimulationSettings, _Simulator, detector_mrad_per_px, geometry, scan_positions
    from polarmap.structures import StructureSettings, build_supercell
    from polarmap.virtual import annular_mask, virtual_image

    atoms = build_supercell(CELLS, class_name, StructureSettings(a_site_order="random", a_site_seed=seed))
    settings = SimulationSettings(method="prism", gpts_per_cell=64, frozen_phonon_configs=2, frozen_phonon_seed=seed)
    geo = geometry(atoms, settings)
    simulator = _Simulator(atoms, geo, settings)
    step = geo.a_pc / PX_PER_CELL
    scans = {name: simulator.at(scan_positions((SCAN, SCAN), step, angle_deg, drift)).reshape(SCAN, SCAN, -1, simulator.settings.detector_px)
             for name, (angle_deg, drift, _) in SCANS.items()}
    mrad = detector_mrad_per_px(geo.a_pc, settings)
    upright = scans["upright"][:32, :32]  # one period: the known cells, periodic
    centre = np.array(upright.shape[-2:]) // 2
    adf = virtual_image(upright, annular_mask(upright.shape[-2:], centre, mrad, 60, 150))
    reference = fit_cells(adf, PX_PER_CELL, step, periodic=True).displacement_angstrom.mean(axis=0) * 100  # (row, col) pm, +row up
    return scans, {"mrad_per_px": mrad, "step_angstrom": step, "thickness_nm": geo.thickness_nm, "reference_pm": reference}


def recorded(patterns: np.ndarray, dose: float, rng) -> np.ndarray:
    """As a detector records them, +row up still: the disc moved by the descan plane, the
    detector turned a quarter and mirrored, Poisson counts of `dose` electrons per pattern."""
    from scipy import ndimage

    out = np.empty_like(patterns)
    for row in range(patterns.shape[0]):
        for col in range(patterns.shape[1]):
            shift = DESCAN_PX + DESCAN_PER_STEP * np.array([row, col])
            out[row, col] = ndimage.shift(patterns[row, col], shift, order=1, mode="constant")
    out = np.rot90(out, 1, axes=(2, 3))[..., ::-1]
    out = out.clip(0)
    return rng.poisson(out / out.sum(axis=(-2, -1), keepdims=True) * dose).astype(np.float32)


def write(path: Path, counts: np.ndarray, kind: str) -> Path:
    """As displayed: scan row 0 and detector row 0 on top."""
    displayed = counts[::-1, :, ::-1, :]
    if kind == "mib":
        write_mib(path.with_suffix(".mib"), (np.clip(displayed[row], 0, 4095) for row in range(displayed.shape[0])), displayed.shape[:2])
        return path.with_suffix(".mib")
    import h5py

    with h5py.File(path.with_suffix(".h5"), "w") as f:
        f["frames"] = displayed
    return path.with_suffix(".h5")


def mapped(path: Path, out: Path, truth: dict, library: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(path), "--out", str(out), "--mrad-per-px", str(truth["mrad_per_px"]),
                             "--scan-step-angstrom", str(truth["step_angstrom"]), "--energy-kev", "200", "--semiangle-mrad", "24",
                             "--pacbed", str(library)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1]}
    summary = json.loads(result.stdout)
    with open(out / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    return {"seconds": seconds, "summary": summary, "rows": rows}


def scores(result: dict, class_name: str, truth: dict, angle_deg: float, drift: float) -> dict:
    rows, summary = result["rows"], result["summary"]
    from polarmap.classes import CLASS_NAMES, angle_to_class

    right = np.array([row["class"] == class_name for row in rows])
    # the vector's own bin, whatever its uncertainty (the class before the two-sigma rule)
    raw = np.array([CLASS_NAMES[angle_to_class(np.radians(float(row["angle_deg"])))] == class_name for row in rows])
    unknown = np.array([row["class"] == "unknown" for row in rows])
    vectors = np.array([[float(row["crystal_u_pm"]), float(row["crystal_v_pm"])] for row in rows])
    reference = truth["reference_pm"][::-1]  # (row, col) -> (u along a ~ +col, v along b ~ +row)
    residual = np.array([float(row["residual"]) for row in rows])
    lattice = summary["cells"]["lattice"]
    # the image of a scan turned +theta shows the crystal turned -theta; a drift shears b
    planted = {"rotation_deg": -angle_deg, "shear_deg": float(np.degrees(np.arctan(drift)))}
    return {
        "cells": len(rows), "right": int(right.sum()), "right_before_two_sigma": int(raw.sum()), "unknown": int(unknown.sum()), "wrong": int((~right & ~unknown).sum()),
        "right_fraction": float(right.mean()), "median_error_pm": float(np.median(np.hypot(*(vectors - reference).T))),
        "median_uncertainty_pm": float(np.median([float(row["uncertainty_pm"]) for row in rows])),
        "rotation_error_deg": abs(lattice["rotation_deg"] - planted["rotation_deg"]), "shear_deg": lattice["shear_deg"],
        "planted_shear_deg": planted["shear_deg"], "thickness_nm": summary["thickness"].get("thickness_nm"),
        "thickness_range_nm": summary["thickness"].get("range_nm"), "seconds": round(result["seconds"], 1),
        "right_residual_ratios": (residual[raw] / np.median(residual)).round(4).tolist(),
        "other_residual_ratios": (residual[~raw] / np.median(residual)).round(4).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", nargs="+", default=["RM", "RU", "MU", "LU", "LM", "LD", "MD", "RD"])
    parser.add_argument("--name", default="cells_detector")
    args = parser.parse_args()
    from polarmap.atomic import save_npz_atomically
    from polarmap.simulation import PacbedLibrarySettings, SimulationSettings, pacbed_library

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        library = work / "library.npz"
        save_npz_atomically(library, pacbed_library(SimulationSettings(gpts_per_cell=64), PacbedLibrarySettings(max_thickness_nm=40)))
        for number, class_name in enumerate(args.classes):
            t = time.perf_counter()
            scans, truth = simulate(class_name, seed=100 + number)
            print(f"{class_name}: simulated in {time.perf_counter() - t:.0f} s; reference {truth['reference_pm'].round(1)} pm (row, col)", flush=True)
            rng = np.random.default_rng(number)
            for scan_name, (angle_deg, drift, kind) in SCANS.items():
                for dose in DOSES:
                    path = write(work / f"{class_name}_{scan_name.split()[0]}_{dose:.0e}", recorded(scans[scan_name], dose, rng), kind)
                    result = mapped(path, work / f"out_{path.stem}", truth, library)
                    path.unlink()
                    row = {"class": class_name, "scan": scan_name, "format": kind, "dose": dose}
                    row.update({"error": result["error"]} if "error" in result else scores(result, class_name, truth, angle_deg, drift))
                    results.append(row)
                    print({k: v for k, v in row.items() if k != "right_residual_ratios"}, flush=True)
    report(results, args.name, time.perf_counter() - started)


def report(results: list[dict], name: str, seconds: float) -> None:
    mapped_rows = [r for r in results if "error" not in r]
    ratios = np.concatenate([r["right_residual_ratios"] for r in mapped_rows]) if mapped_rows else np.array([])
    others = np.concatenate([r["other_residual_ratios"] for r in mapped_rows]) if mapped_rows else np.array([])
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    lines = [f"Per-cell maps of simulated detector files (`python benchmarks/cells_detector.py`; {machine}; {seconds / 60:.0f} min in all).", "",
             "Independent 4x4x50 crystals (20 nm, K/Na at random, 2 phonon configurations), 48x48 scans at 8 px per cell, the detector "
             "turned a quarter and mirrored, a descan plane, Poisson counts; the map alone (no model), its thickness from a 1-40 nm "
             "PACBED library.", "",
             "| class | scan | file | electrons/pattern | cells | right | unknown | wrong | right before the 2-sigma rule | median error (pm) | "
             "median sigma (pm) | angle error (deg) | shear found / planted (deg) | thickness (nm) | map (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['class']} | {r['scan']} | {r['format']} | {r['dose']:.0e} | {r['error']} ||||||||||")
            continue
        lines.append(f"| {r['class']} | {r['scan']} | {r['format']} | {r['dose']:.0e} | {r['cells']} | {r['right']} | {r['unknown']} | {r['wrong']} | "
                     f"{r['right_before_two_sigma']} | {r['median_error_pm']:.1f} | {r['median_uncertainty_pm']:.1f} | {r['rotation_error_deg']:.2f} | "
                     f"{r['shear_deg']:.2f} / {r['planted_shear_deg']:.2f} | {r['thickness_nm']} | {r['seconds']} |")
    for dose in DOSES:
        at = [r for r in mapped_rows if r["dose"] == dose]
        if at:
            lines += ["", f"At {dose:.0e} electrons per pattern: {sum(r['right'] for r in at)} of {sum(r['cells'] for r in at)} cells right "
                      f"({100 * sum(r['right'] for r in at) / sum(r['cells'] for r in at):.1f} %), {sum(r['wrong'] for r in at)} wrong, "
                      f"{sum(r['unknown'] for r in at)} unknown; before the two-sigma rule {sum(r['right_before_two_sigma'] for r in at)} right "
                      f"({100 * sum(r['right_before_two_sigma'] for r in at) / sum(r['cells'] for r in at):.1f} %); median error {np.median([r['median_error_pm'] for r in at]):.1f} pm "
                      f"(largest of a map {max(r['median_error_pm'] for r in at):.1f}); largest angle error "
                      f"{max(r['rotation_error_deg'] for r in at):.2f} deg."]
    if len(ratios):
        lines += ["", f"Fit residual of a cell whose vector is in its class's bin, over its scan's median: 99th percentile "
                  f"{np.percentile(ratios, 99):.2f}, largest {ratios.max():.2f} ({len(ratios)} cells); of the others: largest "
                  f"{others.max() if len(others) else float('nan'):.2f} ({len(others)} cells): lattice.RESIDUAL_FACTOR is set above them."]
    (HERE / f"{name}.md").write_text("\n".join(lines) + "\n")
    (HERE / f"{name}.json").write_text(json.dumps({"machine": machine, "seconds": seconds, "results": results}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
