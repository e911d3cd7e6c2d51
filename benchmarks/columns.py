"""What virtual images and column fitting cost on a paper-scale scan, and how our column fitter
compares with Atomap (issue 16).

    python benchmarks/columns.py [--name columns]            # virtual images and our fitter
    python benchmarks/columns.py --atomap                    # Atomap, in an environment with
                                                              # `pip install atomap` (adds to the JSON)

1. A 128x128 scan of 128x128 px patterns (float32, 1.07 GB, as the paper preset's sets) whose
   virtual ADF image is a lattice of 16x16 unit cells (8 scan px per cell, 0.5 A steps): Gaussian
   A-site columns of random height, Nb columns displaced 0.15 A along all 8 classes, faint oxygen,
   1 % noise; the bright-field disc deflected along the lattice's gradient, so that the CoM field
   and iDPC see it too. `polarmap virtual-images` on it, in its own process (time, peak memory).
2. Column fitting of its ADF image (256 cells) and of its iDPC image: time, cells found, largest
   displacement error, classes right.
3. With --atomap: Atomap 0.4 on the same ADF image (peak finding, 2-D Gaussian refinement of every
   column): time, columns found, and the error of the Nb positions, beside ours.
Writes benchmarks/<name>.md and benchmarks/<name>.json.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCAN, DETECTOR, CELL_PX, STEP, DISPLACEMENT = 128, 128, 8.0, 0.5, 0.15


def lattice():
    """The ADF lattice image (periodic), the true Nb positions (px) and the true displacements
    (angstrom, (row, col)) of its cells, one class per cell in turn."""
    rng = np.random.default_rng(0)
    rows, cols = np.indices((SCAN, SCAN), dtype=np.float64)
    image = np.zeros((SCAN, SCAN))
    width = 0.35 / STEP

    def column(r, c, height):
        dr, dc = (rows - r + SCAN / 2) % SCAN - SCAN / 2, (cols - c + SCAN / 2) % SCAN - SCAN / 2
        image[:] += height * np.exp(-(dr**2 + dc**2) / (2 * width**2))

    cells = int(SCAN / CELL_PX)
    nb, displacement = [], []
    for i in range(cells):
        for j in range(cells):
            column(i * CELL_PX, j * CELL_PX, rng.uniform(0.3, 0.6))
            column((i + 0.5) * CELL_PX, j * CELL_PX, 0.1)
            column(i * CELL_PX, (j + 0.5) * CELL_PX, 0.1)
            theta = np.deg2rad(45 * ((i * cells + j) % 8))
            d = DISPLACEMENT * np.array([np.sin(theta), np.cos(theta)])
            nb.append(np.array([(i + 0.5) * CELL_PX, (j + 0.5) * CELL_PX]) + d / STEP)
            displacement.append(d)
            column(*nb[-1], 1.0)
    return image + rng.normal(0, 0.01, image.shape), np.array(nb), np.array(displacement)


def write_scan(path: Path, adf: np.ndarray) -> None:
    """Patterns of a bright disc (7.6 px) deflected towards the columns (by the gradient of the
    lattice, at most half a pixel) plus an annulus within the ADF range whose intensity is the
    lattice at that probe position: the scan's virtual ADF image is `adf` and its CoM field the
    lattice's gradient, so that iDPC sees the lattice too."""
    from polarmap import io
    from polarmap.virtual import annular_mask

    centre = DETECTOR // 2
    ring = annular_mask((DETECTOR, DETECTOR), (centre, centre), 3.15, 70, 140).astype(np.float32)
    ring /= ring.sum()
    gradient = np.stack(np.gradient(adf), axis=-1)
    gradient *= 0.5 / np.abs(gradient).max()
    det_rows, det_cols = np.indices((DETECTOR, DETECTOR), dtype=np.float32)
    attrs = {"name": "paper_scale", "classes": ["RM"], "class_names": ["RM", "RU", "MU", "LU", "LM", "LD", "MD", "RD"],
             "thickness_nm": 20.0, "supercell": f"{SCAN // int(CELL_PX)}x{SCAN // int(CELL_PX)}x50", "energy_kev": 200.0,
             "semiangle_mrad": 24.0, "detector_mrad_per_px": 3.15, "scan_step_angstrom": STEP, "source": "benchmark",
             "scan_symmetries_px": "[]", "scan_origin_angstrom": "[0.0, 0.0]"}
    with io.create_dataset_file(path, (SCAN, SCAN), (DETECTOR, DETECTOR), attrs) as f:
        for start in range(0, SCAN, 8):
            shift = gradient[start:start + 8, :, None, None, :].astype(np.float32)
            distance = np.hypot(det_rows - centre - shift[..., 0], det_cols - centre - shift[..., 1])
            disc = np.clip(24 / 3.15 - distance + 0.5, 0, 1)  # 24 mrad, anti-aliased edge
            block = disc + (adf[start:start + 8, :, None, None] - adf.min() + 0.1).astype(np.float32) * ring[None, None]
            io.write_rows(f, start, block, np.zeros(block.shape[:2], np.int8))


def score(fit, nb_true, displacement_true) -> dict:
    """Match each fitted cell to the nearest true Nb column (periodic)."""
    offsets = (fit.nb_px[:, None, :] - nb_true[None, :, :] + SCAN / 2) % SCAN - SCAN / 2
    nearest = np.argmin(np.hypot(offsets[..., 0], offsets[..., 1]), axis=1)
    errors = np.hypot(*(fit.displacement_angstrom - displacement_true[nearest]).T)
    true_classes = np.round(np.degrees(np.arctan2(*displacement_true[nearest].T)) / 45).astype(int) % 8
    return {"cells": len(fit.classes), "max_error_angstrom": float(errors.max()), "median_error_angstrom": float(np.median(errors)),
            "classes_right": int((fit.classes == true_classes).sum())}


def ours(tmp: Path) -> dict:
    from polarmap.columns import fit_cells

    adf, nb_true, displacement_true = lattice()
    path = tmp / "paper_scale.h5"
    start = time.perf_counter()
    write_scan(path, adf)
    written = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(["polarmap", "virtual-images", str(path), "--out", str(tmp / "virtual.npz")], check=True)
    result = {"scan": f"{SCAN}x{SCAN} of {DETECTOR}x{DETECTOR} px", "file_gb": path.stat().st_size / 1e9, "write_s": written,
              "virtual_images_s": time.perf_counter() - start,
              "virtual_images_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2}
    with np.load(tmp / "virtual.npz") as images:
        virtual_adf, idpc = images["adf"], images["idpc"]
    for name, image in (("adf", virtual_adf), ("idpc", idpc)):
        start = time.perf_counter()
        fit = fit_cells(image, CELL_PX, STEP, periodic=True)
        result[f"fit_{name}_s"] = time.perf_counter() - start
        result[f"fit_{name}"] = score(fit, nb_true, displacement_true)
    return result


def atomap_figures() -> dict:
    """Atomap on the same ADF image, as its documentation runs it: peaks, then 2-D Gaussians."""
    import atomap.api as am

    image, nb_true, _ = lattice()
    start = time.perf_counter()
    positions = am.get_atom_positions(_signal(image), separation=int(0.35 * CELL_PX))
    sublattice = am.Sublattice(positions, image=image)
    sublattice.find_nearest_neighbors()
    sublattice.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
    seconds = time.perf_counter() - start
    fitted = np.stack([sublattice.y_position, sublattice.x_position], axis=1)
    offsets = fitted[:, None, :] - nb_true[None, :, :]
    distance = np.hypot(offsets[..., 0], offsets[..., 1])
    matched = distance.min(axis=0) < 0.25 * CELL_PX
    return {"atomap_s": seconds, "atomap_columns": len(fitted), "atomap_nb_found": int(matched.sum()),
            "atomap_nb_median_error_angstrom": float(np.median(distance.min(axis=0)[matched]) * STEP)}


def _signal(image):
    import hyperspy.api as hs

    return hs.signals.Signal2D(image)


def ours_nb_error() -> float:
    """Our fitter's Nb position error on the same image, to set beside Atomap's."""
    from polarmap.columns import fit_cells

    image, nb_true, _ = lattice()
    fit = fit_cells(image, CELL_PX, STEP, periodic=True)
    offsets = (fit.nb_px[:, None, :] - nb_true[None, :, :] + SCAN / 2) % SCAN - SCAN / 2
    return float(np.median(np.hypot(offsets[..., 0], offsets[..., 1]).min(axis=1)) * STEP)


def write(name: str, result: dict) -> None:
    (HERE / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Virtual images and column fitting ({result['machine']})", "",
             f"Scan {result['scan']}, {result['file_gb']:.2f} GB float32, a lattice of {SCAN // int(CELL_PX)}x{SCAN // int(CELL_PX)} "
             f"unit cells ({CELL_PX:.0f} scan px per cell, {STEP} A steps), Nb displaced {DISPLACEMENT} A, 1 % noise.", "",
             "| Step | Time (s) | Result |", "|---|---|---|",
             f"| `polarmap virtual-images` (own process) | {result['virtual_images_s']:.1f} | peak memory {result['virtual_images_peak_rss_gb']:.2f} GB |"]
    for image in ("adf", "idpc"):
        fit = result[f"fit_{image}"]
        lines.append(f"| column fit, {image.upper() if image == 'adf' else 'iDPC'} | {result[f'fit_{image}_s']:.2f} | {fit['cells']} cells, "
                     f"{fit['classes_right']} classes right, displacement error median {fit['median_error_angstrom']:.4f} A, "
                     f"max {fit['max_error_angstrom']:.4f} A |")
    if "atomap_s" in result:
        lines.append(f"| Atomap 0.4 (peaks + 2-D Gaussians, all columns) | {result['atomap_s']:.2f} | {result['atomap_columns']} columns, "
                     f"{result['atomap_nb_found']} of 256 Nb, Nb position error median {result['atomap_nb_median_error_angstrom']:.4f} A "
                     f"(ours: {result['ours_nb_median_error_angstrom']:.4f} A); import {result['atomap_import_s']:.1f} s |")
    (HERE / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="columns")
    parser.add_argument("--atomap", action="store_true", help="add Atomap's figures to an existing <name>.json")
    args = parser.parse_args()
    if args.atomap:
        result = json.loads((HERE / f"{args.name}.json").read_text())
        start = time.perf_counter()
        import atomap.api  # noqa: F401

        result["atomap_import_s"] = time.perf_counter() - start
        result.update(atomap_figures())
        result["ours_nb_median_error_angstrom"] = ours_nb_error()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = ours(Path(tmp))
        result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    write(args.name, result)
    print((HERE / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
