"""Unit cells on the scan grid: which pseudocubic cell each probe position lies in, where in that
cell it lies, the majority vote of per-pattern predictions in each cell, and accuracy against the
probe's position in the cell. A leaf module: arrays and metadata in, arrays out, no files.

A cell is the square between four A-site columns, its Nb column near the centre: in structure
coordinates A sites sit at integer multiples of the cell and Nb at the half-integers
(`structures.build_supercell`). Positions are (row, col) = (y, x) in angstrom, as the scan."""

import json
from dataclasses import dataclass

import numpy as np

from polarmap.classes import majority_class
from polarmap.dataset_kind import supercell_repeats


@dataclass(frozen=True)
class ScanCells:
    """The lattice of a simulated scan: step and origin of the probe grid, cell edge, cells per
    supercell (rows, cols), periodic."""
    step_angstrom: float
    origin_angstrom: tuple[float, float]
    cell_angstrom: float
    cells: tuple[int, int]

    @property
    def cell_px(self) -> float:
        return self.cell_angstrom / self.step_angstrom

    def positions(self, scan_shape) -> np.ndarray:
        """(rows, cols, 2): each probe position in angstrom."""
        rows, cols = np.indices(scan_shape, dtype=np.float64) * self.step_angstrom
        return np.stack([rows + self.origin_angstrom[0], cols + self.origin_angstrom[1]], axis=-1)

    def index(self, positions: np.ndarray) -> np.ndarray:
        """The cell of each position (..., 2) in angstrom, numbered row-major over the supercell."""
        cell = np.floor(np.asarray(positions) / self.cell_angstrom).astype(np.int64) % np.array(self.cells)
        return cell[..., 0] * self.cells[1] + cell[..., 1]

    def fraction(self, positions: np.ndarray) -> np.ndarray:
        """Where each position (..., 2) lies in its cell: (row, col) in [0, 1), Nb near (0.5, 0.5)."""
        return np.mod(np.asarray(positions) / self.cell_angstrom, 1.0)

    @property
    def n_cells(self) -> int:
        return self.cells[0] * self.cells[1]


def scan_cells(attrs: dict, scan_shape) -> ScanCells | None:
    """The cells of a simulated set (or an experiment-like set made from one) from its metadata;
    None for detector data, whose lattice is not known before its columns are fitted."""
    repeats = supercell_repeats(attrs)
    if repeats is None or "scan_origin_angstrom" not in attrs:
        return None
    step = float(attrs["scan_step_angstrom"])
    origin = attrs["scan_origin_angstrom"]
    origin = json.loads(origin) if isinstance(origin, str) else origin
    # the scan spans the supercell laterally (simulation.geometry: step = extent / scan px)
    return ScanCells(step, (float(origin[0]), float(origin[1])), step * scan_shape[1] / repeats[0], (repeats[1], repeats[0]))


def cell_majority(predictions: np.ndarray, cell_ids: np.ndarray, n_cells: int, n_classes: int) -> np.ndarray:
    """The majority class of the predictions in each cell (ties: the lowest class index; -1 for
    a cell without patterns)."""
    predictions, cell_ids = np.ravel(predictions), np.ravel(cell_ids)
    votes = np.bincount(cell_ids * n_classes + predictions, minlength=n_cells * n_classes).reshape(n_cells, n_classes)
    return majority_class(votes)


def accuracy_by_position(correct: np.ndarray, fractions: np.ndarray, bins: int) -> np.ndarray:
    """(bins, bins): the fraction of right patterns per bin of position in the cell (row, col),
    pooled over all cells; NaN for a bin no probe position fell in."""
    index = np.minimum((np.asarray(fractions) * bins).astype(np.int64), bins - 1).reshape(-1, 2)
    flat = index[:, 0] * bins + index[:, 1]
    total = np.bincount(flat, minlength=bins * bins)
    right = np.bincount(flat, weights=np.ravel(correct).astype(np.float64), minlength=bins * bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / np.maximum(total, 1), np.nan).reshape(bins, bins)
