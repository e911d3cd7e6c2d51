"""Input files for QSTEM, the engine the paper used, so its users can regenerate a data set
with the original program: an extended-CFG atom file and a .qsc parameter file.

QSTEM writes one diffraction pattern per probe position; `polarmap import FOLDER --scan-shape ROWS COLS` turns that
folder (exported as TIFFs) into the HDF5 format.
"""

from pathlib import Path

import ase
import numpy as np
from ase.data import atomic_masses

from polarmap.simulation import SimulationSettings, geometry

DEBYE_WALLER_A2 = {"K": 0.8, "Na": 0.8, "Nb": 0.3, "O": 0.5}  # room-temperature B-ish values


def write_cfg(atoms: ase.Atoms, path: str | Path) -> None:
    """AtomEye extended CFG, the format QSTEM reads (reduced coordinates, per-atom Debye-Waller
    factor, occupancy and charge as auxiliary columns)."""
    if not np.allclose(atoms.cell, np.diag(atoms.cell.lengths())):
        raise ValueError(f"{path}: QSTEM needs an orthogonal cell")
    scaled = atoms.get_scaled_positions(wrap=True)
    lines = [f"Number of particles = {len(atoms)}", "A = 1.0 Angstrom (basic length-scale)"]
    for i in range(3):
        for j in range(3):
            lines.append(f"H0({i + 1},{j + 1}) = {atoms.cell[i, j]:.6f} A")
    lines += [".NO_VELOCITY.", "entry_count = 6", "auxiliary[0] = DW [A^2]", "auxiliary[1] = occ. [1]", "auxiliary[2] = charge [e]"]
    symbols = np.array(atoms.get_chemical_symbols())
    for symbol in dict.fromkeys(symbols):
        lines += [f"{atomic_masses[ase.data.atomic_numbers[symbol]]:.4f}", symbol]
        for s in scaled[symbols == symbol]:
            lines.append(f"{s[0]:.6f} {s[1]:.6f} {s[2]:.6f} {DEBYE_WALLER_A2.get(symbol, 0.5):.3f} 1.0 0.0")
    Path(path).write_text("\n".join(lines) + "\n")


def write_qsc(atoms: ase.Atoms, settings: SimulationSettings, cfg_name: str, output_folder: str, path: str | Path) -> None:
    """A STEM-mode parameter file matching `settings`: same energy, semi-angle, sampling,
    probe window, slice thickness and scan as the abTEM data set."""
    geo = geometry(atoms, settings)
    lx, ly, lz = atoms.cell.lengths()
    sampling = geo.a_pc / settings.gpts_per_cell
    slice_thickness = settings.slice_thickness_angstrom or geo.a_pc / 2
    step = lx / settings.scan_px
    tds = settings.frozen_phonon_configs > 0
    params = [
        ("mode", "STEM"),
        ("print level", 2),
        ("save level", 0),
        ("filename", f'"{cfg_name}"'),
        ("NCELLX", 1), ("NCELLY", 1), ("NCELLZ", 1),
        ("v0", settings.energy_kev),
        ("alpha", settings.semiangle_mrad),
        ("Cs", 0.0), ("C5", 0.0), ("defocus", 0.0), ("astigmatism", 0.0), ("astigmatism angle", 0.0),
        ("Source Size (diameter)", 0.0), ("beam current", 1.0), ("dwell time", 1.0),
        # the probe window: detector sampling = 1 / window, as in the abTEM data sets
        ("nx", settings.detector_px), ("ny", settings.detector_px),
        ("resolutionX", f"{sampling:.6f}"), ("resolutionY", f"{sampling:.6f}"),
        ("slice-thickness", f"{slice_thickness:.6f}"),
        ("slices", int(round(lz / slice_thickness))),
        ("center slices", "no"), ("periodicXY", "yes"), ("periodicZ", "no"),
        ("bandlimit f_trans", "yes"), ("potential3D", "yes"), ("atom radius", 5.0),
        ("tds", "yes" if tds else "no"), ("temperature", 300.0),
        ("Runs for averaging", max(settings.frozen_phonon_configs, 1)),
        ("Store TDS diffr. patt. series", "no"),
        ("scan_x_start", 0.0), ("scan_x_stop", f"{lx - step:.6f}"), ("scan_x_pixels", settings.scan_px),
        ("scan_y_start", 0.0), ("scan_y_stop", f"{ly - step:.6f}"), ("scan_y_pixels", settings.scan_px),
        ("detector", '0 1000 "diffraction" 0 0'),
        ("Folder", f'"{output_folder}"'),
        ("propagation progress interval", 100), ("potential progress interval", 1000),
    ]
    header = [
        "% QSTEM parameter file written by polarmap; it mirrors the abTEM settings of this data set.",
        f"% structure: {atoms.info.get('polarization', 'none')} {atoms.info.get('supercell', '')}, a_pc = {geo.a_pc:.4f} A",
        "% Save every diffraction pattern (QSTEM's 4D output option of your build), export the",
        "% folder as one TIFF per position and run `polarmap import` on it with --scan-shape.",
    ]
    Path(path).write_text("\n".join(header + [f"{key}: {value}" for key, value in params]) + "\n")
