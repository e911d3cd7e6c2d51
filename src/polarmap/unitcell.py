"""A position-aware model: it sees one whole unit cell, the virtual ADF image and the CoM field
over the cell, and answers that cell's polarization. Per-pattern models see one probe position and
must guess where in the cell it is; this one is told (issue 16).

A cell's window is resampled to CELL_GRID x CELL_GRID points over the cell (A-site columns at the
corners, Nb near the centre), whatever the scan step, so that sets of different sampling meet one
model. Training draws windows jittered by a fraction of a cell and applies the 8 symmetries of the
square to image, field and label together (a rotation by 90 degrees turns class k into k + 2)."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polarmap.cells import ScanCells
from polarmap.classes import CLASS_NAMES
from polarmap.models import refuse_non_finite, save_model_file

CELL_GRID = 8
CHANNELS = ("adf", "com_row", "com_col")


@dataclass(frozen=True)
class UnitCellSettings:
    epochs: int = 15
    lr: float = 1e-3
    batch_size: int = 128
    windows_per_cell: int = 32  # jittered draws of each training cell per epoch
    jitter_fraction: float = 0.1  # of a cell, each way
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.windows_per_cell < 1:
            raise ValueError("unit_cell: epochs, batch_size and windows_per_cell must be at least 1")
        if not 0 <= self.jitter_fraction < 0.5:
            raise ValueError(f"unit_cell: jitter_fraction {self.jitter_fraction} must be in [0, 0.5)")


def cell_corners_px(cells: ScanCells) -> np.ndarray:
    """(n_cells, 2): where each cell's lower corner (an A site) lies on the scan grid, in scan px,
    numbered as `ScanCells.index` numbers the cells."""
    corners = np.array([[r, c] for r in range(cells.cells[0]) for c in range(cells.cells[1])], dtype=np.float64)
    return (corners * cells.cell_angstrom - np.asarray(cells.origin_angstrom)) / cells.step_angstrom


def cell_windows(adf: np.ndarray, com: np.ndarray, cell_px: float, corners_px: np.ndarray) -> np.ndarray:
    """The windows of a simulated scan's known cells: square, along the scan axes, periodic
    across the scan (`lattice_windows`)."""
    return lattice_windows(adf, com, corners_px, np.array([[0.0, cell_px], [cell_px, 0.0]]), periodic=True)


def lattice_windows(adf: np.ndarray, com: np.ndarray, corners_px: np.ndarray, vectors_px: np.ndarray, periodic: bool) -> np.ndarray:
    """(n, 3, CELL_GRID, CELL_GRID): ADF and CoM sampled over the cells spanned by the lattice
    vectors a, b (rows of `vectors_px`, (row, col) in scan px, b counter-clockwise from a) from
    the lower corners `corners_px` (n, 2): window rows run along b, columns along a, and the CoM
    field is taken along b and a, so that a cell turned against the scan is the model's upright
    cell. The ADF is standardised per window and the field scaled by its RMS, so that thickness
    and dose change the picture less. `periodic`: wrap across the scan (a simulated supercell)."""
    from scipy.ndimage import map_coordinates

    a, b = np.asarray(vectors_px, dtype=np.float64)
    steps = (np.arange(CELL_GRID) + 0.5) / CELL_GRID
    corners = np.asarray(corners_px, dtype=np.float64).reshape(-1, 2)
    points = corners[:, None, None, :] + steps[None, :, None, None] * b + steps[None, None, :, None] * a
    coordinates = np.moveaxis(points, -1, 0)
    com = np.asarray(com, np.float64)
    along_b, along_a = com @ (b / np.linalg.norm(b)), com @ (a / np.linalg.norm(a))
    windows = np.empty((len(corners), len(CHANNELS), CELL_GRID, CELL_GRID), np.float32)
    for channel, image in enumerate((adf, along_b, along_a)):
        windows[:, channel] = map_coordinates(np.asarray(image, np.float64), coordinates, order=1, mode="grid-wrap" if periodic else "nearest")
    adf_part = windows[:, 0]
    windows[:, 0] = (adf_part - adf_part.mean(axis=(1, 2), keepdims=True)) / (adf_part.std(axis=(1, 2), keepdims=True) + 1e-12)
    rms = np.sqrt((windows[:, 1:] ** 2).sum(axis=1).mean(axis=(1, 2)))
    windows[:, 1:] /= rms[:, None, None, None] + 1e-12
    return windows


def symmetry(windows: np.ndarray, labels: np.ndarray, quarter_turns: int, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """Windows and labels under a symmetry of the square: first a mirror x -> -x (class angle
    theta -> 180 - theta), then `quarter_turns` counter-clockwise turns by 90 degrees (+row is up).
    The CoM field's components turn with the image."""
    adf, field_row, field_col = windows[:, 0], windows[:, 1], windows[:, 2]
    labels = np.asarray(labels)
    if mirror:
        adf, field_row, field_col = adf[..., ::-1], field_row[..., ::-1], -field_col[..., ::-1]
        labels = (4 - labels) % len(CLASS_NAMES)
    for _ in range(quarter_turns % 4):
        adf, field_row, field_col = _quarter_turn(adf), _quarter_turn(field_col), -_quarter_turn(field_row)
        labels = (labels + 2) % len(CLASS_NAMES)
    return np.ascontiguousarray(np.stack([adf, field_row, field_col], axis=1)), labels


def _quarter_turn(images: np.ndarray) -> np.ndarray:
    """(x, y) -> (-y, x) with +row up: new[r, c] = old[-c, r]; a vector (row, col) -> (col, -row)."""
    return np.rot90(images, k=-1, axes=(-2, -1))


def cell_source(virtual_path) -> dict:
    """What the model needs of one set, from its stored virtual images: ADF, CoM field, cell size
    and corners on the scan grid, and its class (one class per set) or -1 for a set of several."""
    from polarmap.cells import scan_cells
    from polarmap.classes import class_index

    from polarmap.imaging import read_virtual_images

    images = read_virtual_images(virtual_path)
    adf, com, meta = images["adf"], images["com_mrad"], images["meta"]
    attrs = meta["dataset_attrs"]
    cells = scan_cells(attrs, adf.shape)
    if cells is None:
        raise ValueError(f"{virtual_path}: the unit cells of {attrs['name']} are not known (detector data)")
    classes = attrs["classes"]
    return {"name": attrs["name"], "adf": adf, "com": com, "cells": cells, "cell_px": cells.cell_px,
            "corners": cell_corners_px(cells), "label": class_index(classes[0]) if len(classes) == 1 else -1}


class UnitCellNet(nn.Module):
    """Three small convolutions with circular padding (a window's edge continues into the next
    cell) and no global pooling: where the Nb column sits in the window is the answer."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(len(CHANNELS), 16, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * CELL_GRID * CELL_GRID, 64), nn.ReLU(), nn.Linear(64, len(CLASS_NAMES)),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.layers(windows)


def _training_windows(sources: list[dict], settings: UnitCellSettings, rng) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's windows: every cell of every set `windows_per_cell` times, jittered, each under
    a random symmetry of the square."""
    windows, labels = [], []
    for source in sources:
        corners = np.repeat(source["corners"], settings.windows_per_cell, axis=0)
        corners = corners + rng.uniform(-1, 1, corners.shape) * settings.jitter_fraction * source["cell_px"]
        windows.append(cell_windows(source["adf"], source["com"], source["cell_px"], corners))
        labels.append(np.full(len(corners), source["label"]))
    windows, labels = np.concatenate(windows), np.concatenate(labels)
    turns, mirrors = rng.integers(0, 4, len(labels)), rng.integers(0, 2, len(labels)).astype(bool)
    for quarter_turns in range(4):
        for mirror in (False, True):
            chosen = (turns == quarter_turns) & (mirrors == mirror)
            windows[chosen], labels[chosen] = symmetry(windows[chosen], labels[chosen], quarter_turns, mirror)
    return windows, labels


def train_unit_cell_model(training: list[dict], validation: list[dict], out: Path, settings: UnitCellSettings,
                          learned_min_accuracy: float) -> dict:
    """Train on cells of the `training` sets and validate on the cells of the `validation` sets
    (other crystals), each a dict of adf, com, cell_px, corners and label. Writes model.pt (tensors
    and plain values only) and returns the record: validation accuracy and whether it learned."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = UnitCellNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    loss = nn.CrossEntropyLoss()
    held_out = np.concatenate([cell_windows(v["adf"], v["com"], v["cell_px"], v["corners"]) for v in validation])
    held_out_labels = np.concatenate([np.full(len(v["corners"]), v["label"]) for v in validation])
    history = []
    for epoch in range(settings.epochs):
        windows, labels = _training_windows(training, settings, rng)
        order = rng.permutation(len(labels))
        model.train()
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            optimiser.zero_grad()
            value = loss(model(torch.from_numpy(windows[batch])), torch.from_numpy(labels[batch]).long())
            value.backward()
            optimiser.step()
        accuracy = float((predict_windows(model, held_out)[0] == held_out_labels).mean())
        history.append({"epoch": epoch + 1, "loss": float(value.detach()), "validation_accuracy": accuracy})
    payload = {"kind": "unit_cell", "settings": json.dumps(asdict(settings)), "state_dict": model.state_dict()}
    save_model_file(out, payload)
    final = history[-1]["validation_accuracy"]
    return {"settings": asdict(settings), "history": history, "validation_cells": int(len(held_out_labels)),
            "training_cells": int(sum(len(t["corners"]) for t in training)),
            "validation_accuracy": final, "synthetic_test_accuracy": final, "learned": final >= learned_min_accuracy}


def predict_windows(model: UnitCellNet, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes and angles (radians, the probability-weighted circular mean) of cell windows."""
    model.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(windows, np.float32))), dim=1).numpy()
    theta = np.deg2rad(45.0 * np.arange(len(CLASS_NAMES)))
    angles = np.arctan2(probabilities @ np.sin(theta), probabilities @ np.cos(theta))
    return probabilities.argmax(axis=1), angles


def load_unit_cell_model(path) -> UnitCellNet:
    """A unit-cell model from its model.pt (tensors and plain values only)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("kind") != "unit_cell":
            raise ValueError("it is not a unit-cell model")
        model = UnitCellNet()
        model.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model; train it first (polarmap train-unit-cell)") from None
    except Exception as err:  # torch raises many types for damaged files
        raise ValueError(f"{path}: not a readable unit-cell model ({str(err).splitlines()[0]}); retrain it with polarmap train-unit-cell") from None
    refuse_non_finite(model, path)
    return model.eval()
