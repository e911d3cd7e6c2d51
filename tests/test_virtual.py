"""Virtual detectors and the CoM field, first on fields made by hand, then on real abTEM data."""

import json

import numpy as np
import pytest

from polarmap import blocks
from polarmap.virtual import annular_mask, com_field, differentiated_com, integrated_com, virtual_image
from test_preprocessing import disc


def bumps(n=32, centres=((8, 8), (8, 24), (24, 8), (24, 24), (16, 16)), width=2.0):
    """A periodic 'projected potential': Gaussian columns on an n x n scan."""
    rows, cols = np.indices((n, n), dtype=np.float64)
    potential = np.zeros((n, n))
    for r, c in centres:
        dr = (rows - r + n / 2) % n - n / 2
        dc = (cols - c + n / 2) % n - n / 2
        potential += np.exp(-(dr**2 + dc**2) / (2 * width**2))
    return potential


def gradient(image):
    """Central differences on the periodic grid, (rows, cols, 2) = (d/drow, d/dcol)."""
    return np.stack([(np.roll(image, -1, 0) - np.roll(image, 1, 0)) / 2, (np.roll(image, -1, 1) - np.roll(image, 1, 1)) / 2], axis=-1)


def test_idpc_integrates_a_field_back_to_its_potential_and_ddpc_is_its_laplacian():
    potential = bumps()
    field = gradient(potential)
    recovered = integrated_com(field)
    assert np.corrcoef(recovered.ravel(), potential.ravel())[0, 1] > 0.999
    assert abs(recovered.mean()) < 1e-12
    laplacian = differentiated_com(field)
    assert laplacian[8, 8] < 0 and laplacian[16, 16] < 0  # the field converges on the columns
    # noise in the field stays bounded in the integral (no k = 0 blow-up)
    noisy = integrated_com(field + np.random.default_rng(0).normal(0, 0.05, field.shape))
    assert np.corrcoef(noisy.ravel(), potential.ravel())[0, 1] > 0.9


def test_annular_masks_in_mrad_and_the_com_of_a_moved_disc():
    mask = annular_mask((64, 64), (32, 32), 2.0, 10.0, 20.0)
    radii = np.hypot(*(np.argwhere(mask) - 32).T) * 2.0
    assert radii.min() >= 10.0 and radii.max() < 20.0
    assert mask.sum() == pytest.approx(np.pi * (10**2 - 5**2), rel=0.05)
    patterns = np.stack([disc(64, centre=(32 + 1.5, 32 - 0.5)), disc(64)])
    field = com_field(patterns, (32, 32), 2.0)
    assert field[0] == pytest.approx([3.0, -1.0], abs=0.02) and field[1] == pytest.approx([0, 0], abs=0.02)
    bright = virtual_image(patterns, annular_mask((64, 64), (32, 32), 2.0, 0, 20))  # the disc: 7.6 px, 15.2 mrad
    assert bright[1] == pytest.approx(disc(64).sum(), rel=1e-6)


def test_the_detector_axis_from_sampled_rows_gives_the_images_of_the_whole_scans_mean(monkeypatch):
    """Detector data's axis comes from 16 of a 40-row scan's rows before the one pass: with a
    descan plane of 2 px across the scan, it lies within 0.02 px of the whole scan's mean pattern's
    centre; every image is that of detectors around it, within 0.5 % of those around the whole
    scan's (the pixels on the rings' edges that differ hold the disc's edge in the BF and ABF), and the CoM field (scan mean removed) and the
    PACBED do not depend on it."""
    from polarmap.imaging import AXIS_SAMPLE_ROWS, scan_virtual_images
    from polarmap.pattern import center_of_mass
    from test_io import attrs

    rng = np.random.default_rng(8)
    rows, cols = np.indices((40, 6))
    centres = np.stack([48 + 2.0 * rows / 39 + 0.2, 47 - 1.0 * cols / 5 + 0.3], axis=-1) + rng.normal(0, 0.05, (40, 6, 2))
    patterns = np.stack([[disc(96, radius=12, centre=c) * 400 + 1.0 for c in row] for row in centres])
    patterns = rng.poisson(patterns).astype(np.float32)
    meta = attrs(supercell="experimental", detector_mrad_per_px=2.0, semiangle_mrad=24.0)
    monkeypatch.setattr(blocks, "CACHE_BLOCK_BYTES", 3 * patterns[0].nbytes)  # blocks of 3 scan rows: 14 of them
    images = scan_virtual_images(patterns, meta, "d", workers=2)
    axis = center_of_mass(patterns.mean(axis=(0, 1), dtype=np.float64))
    sampled = np.array(json.loads(str(images["meta"]))["centre_px"])
    assert AXIS_SAMPLE_ROWS < 40 and np.abs(sampled - axis).max() < 0.02
    for name, (inner, outer) in {"adf": (60.0, 150.0), "bf": (0.0, 24.0), "abf": (12.0, 24.0)}.items():
        np.testing.assert_allclose(images[name], virtual_image(patterns, annular_mask((96, 96), sampled, 2.0, inner, outer)), rtol=1e-6)
        np.testing.assert_allclose(images[name], virtual_image(patterns, annular_mask((96, 96), axis, 2.0, inner, outer)), rtol=5e-3)
    field = com_field(patterns, axis, 2.0)
    np.testing.assert_allclose(images["com_mrad"], field - field.reshape(-1, 2).mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(images["pacbed"], patterns.mean(axis=(0, 1)), rtol=1e-6)


@pytest.fixture(scope="module")
def simulated_scan():
    """RU, 2x2x25 cells (10 nm), a 16x16 scan over the cell (steps of an eighth of a_pc, 0.5 A)."""
    from polarmap.simulation import SimulationSettings, _Simulator, detector_mrad_per_px, geometry
    from polarmap.structures import build_supercell

    atoms = build_supercell((2, 2, 25), "RU")
    settings = SimulationSettings(method="multislice", gpts_per_cell=64, scan_px=16, rows_per_block=16)
    geo = geometry(atoms, settings)
    step = (geo.extent[0] / settings.scan_px, geo.extent[1] / settings.scan_px)
    patterns = _Simulator(atoms, geo, settings).rows(0, settings.scan_px, step)
    return atoms, patterns, step[0], detector_mrad_per_px(geo.a_pc, settings)


def test_virtual_adf_shows_the_nb_columns_where_the_structure_puts_them(simulated_scan):
    atoms, patterns, step, mrad = simulated_scan
    centre = np.array(patterns.shape[-2:]) // 2
    adf = virtual_image(patterns, annular_mask(patterns.shape[-2:], centre, mrad, 50, 120))
    n = adf.shape[0]
    nb = {tuple(np.round(p[:2] / step, 3) % n) for p in atoms.positions[atoms.numbers == 41]}
    assert len(nb) == 4  # one Nb column per pseudocubic cell
    for col, row in nb:  # positions are (x, y); the scan is (row = y, col = x)
        near = [(int(round(row)) + dr, int(round(col)) + dc) for dr in range(-2, 3) for dc in range(-2, 3)]
        peak = max(near, key=lambda rc: adf[rc[0] % n, rc[1] % n])
        window = [(peak[0] + dr, peak[1] + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        weights = np.array([adf[r % n, c % n] for r, c in window]) - min(adf[r % n, c % n] for r, c in window)
        refined = (weights[:, None] * np.array(window, dtype=float)).sum(axis=0) / weights.sum()
        offset = (refined - [row, col] + n / 2) % n - n / 2
        assert np.hypot(*offset) < 0.5, (row, col, refined)


def test_idpc_of_a_simulated_scan_follows_the_projected_potential(simulated_scan):
    import abtem
    from scipy import ndimage

    atoms, patterns, step, mrad = simulated_scan
    centre = np.array(patterns.shape[-2:]) // 2
    idpc = integrated_com(com_field(patterns, centre, mrad))
    n = idpc.shape[0]
    projected = abtem.Potential(atoms, gpts=(n * 8, n * 8), projection="infinite").build().project().compute().array
    # as the probe sees it (24 mrad at 200 keV: about 1 A wide), on the scan grid; abTEM is (x, y),
    # the scan (row = y, col = x). Measured: 0.91 (0.54 against the unblurred potential)
    seen = ndimage.gaussian_filter(np.asarray(projected), 0.5 / (step / 8), mode="wrap")[::8, ::8].T
    assert np.corrcoef(idpc.ravel(), seen.ravel())[0, 1] > 0.8
    assert np.corrcoef(differentiated_com(com_field(patterns, centre, mrad)).ravel(), seen.ravel())[0, 1] < -0.5


def test_virtual_images_of_a_data_set_file_by_the_command(tmp_path, simulated_scan):
    from polarmap import io
    from polarmap.cli import main
    from test_io import attrs

    atoms, patterns, step, mrad = simulated_scan
    io.write_dataset(tmp_path / "ru.h5", patterns, np.full(patterns.shape[:2], 1, np.int8),
                     attrs(name="ru", classes=["RU"], detector_mrad_per_px=mrad, scan_step_angstrom=step))
    assert main(["virtual-images", str(tmp_path / "ru.h5"), "--out", str(tmp_path / "v.npz"), "--figure", str(tmp_path / "v")]) == 0
    with np.load(tmp_path / "v.npz") as images:
        centre = np.array(patterns.shape[-2:]) // 2
        assert np.allclose(images["adf"], virtual_image(patterns, annular_mask(patterns.shape[-2:], centre, mrad, 60, 150)))
        assert images["idpc"].shape == (16, 16) and images["com_mrad"].shape == (16, 16, 2)
    assert (tmp_path / "v.png").exists() and (tmp_path / "v.pdf").exists()
    io.write_dataset(tmp_path / "raw.h5", patterns[:2, :2], np.zeros((2, 2), np.int8), attrs(name="raw", supercell="experimental", detector_mrad_per_px=float("nan")))
    assert main(["virtual-images", str(tmp_path / "raw.h5"), "--out", str(tmp_path / "r.npz")]) == 2
    assert not (tmp_path / "r.npz").exists()


def test_column_fitting_on_the_virtual_adf_finds_the_class_of_every_cell(simulated_scan):
    from polarmap.classes import CLASS_NAMES
    from polarmap.columns import fit_cells

    atoms, patterns, step, mrad = simulated_scan
    centre = np.array(patterns.shape[-2:]) // 2
    adf = virtual_image(patterns, annular_mask(patterns.shape[-2:], centre, mrad, 60, 150))
    fit = fit_cells(adf, atoms.info["a_pc_angstrom"] / step, step, periodic=True)
    assert [CLASS_NAMES[k] for k in fit.classes] == ["RU"] * 4
    # the Nb-O column's centre moves by less than the Nb (0.15 A): its oxygen stays. Measured: 0.106 A
    angles = np.degrees(np.arctan2(fit.displacement_angstrom[:, 0], fit.displacement_angstrom[:, 1]))
    assert angles == pytest.approx(45, abs=3) and fit.magnitude_angstrom == pytest.approx(0.106, abs=0.01)


def test_column_fitting_on_the_lattice_found_answers_the_cells_a_real_scan_would(tmp_path, simulated_scan):
    """The RU supercell tiled 3x3 (6x6 cells, 48x48 positions): on the known supercell every cell is
    answered and right; on the lattice found in the image, as `polarmap map` finds it, every cell
    whose Nb column and four A-site neighbours lie in the scan is answered and right, and the cells
    at the scan's far edge (their A sites beyond the last position) are unanswered, not guessed."""
    import json

    from polarmap import io
    from polarmap.cli import main
    from test_io import attrs

    atoms, patterns, step, mrad = simulated_scan
    tiled = np.tile(patterns, (3, 3, 1, 1))
    io.write_dataset(tmp_path / "ru.h5", tiled, np.full(tiled.shape[:2], 1, np.int8),
                     attrs(name="ru", classes=["RU"], detector_mrad_per_px=mrad, scan_step_angstrom=step, supercell="6x6x25",
                           scan_origin_angstrom="[0.0, 0.0]"))
    assert main(["virtual-images", str(tmp_path / "ru.h5"), "--out", str(tmp_path / "ru.npz")]) == 0
    answers = {}
    for predictor in ("column_fit_adf", "found_lattice_adf"):
        assert main(["predict-cells", predictor, str(tmp_path / "ru.npz"), "--out", str(tmp_path / f"{predictor}.npz"),
                     "--metrics", str(tmp_path / f"{predictor}.json")]) == 0
        answers[predictor] = json.loads((tmp_path / f"{predictor}.json").read_text())[0]
    known, found = answers["column_fit_adf"], answers["found_lattice_adf"]
    assert known["cells_answered"] == 36 and known["cell_accuracy"] == 1.0
    assert 16 <= found["cells_answered"] < 36 and found["majority_class"] == "RU"
    assert found["cell_accuracy"] == pytest.approx(found["cells_answered"] / 36)  # every answer right; the rest unanswered
    with np.load(tmp_path / "found_lattice_adf.npz") as grids:
        assert set(np.unique(grids["ru"])) == {-1, 1} and (grids["ru"][-1] == -1).all()  # the far edge's cells: no answer


def test_column_fitting_is_a_predictor_on_stored_virtual_images(tmp_path, simulated_scan, monkeypatch):
    """`polarmap column-fit` on the virtual images of a simulated set: every cell and pattern
    right; a scan too coarse for its columns is not applicable, not wrong."""
    import json

    from polarmap import io
    from polarmap.cli import main
    from test_io import attrs

    atoms, patterns, step, mrad = simulated_scan
    geometry = dict(classes=["RU"], detector_mrad_per_px=mrad, scan_step_angstrom=step, supercell="2x2x25", scan_origin_angstrom="[0.0, 0.0]")
    io.write_dataset(tmp_path / "ru.h5", patterns, np.full(patterns.shape[:2], 1, np.int8), attrs(name="ru", **geometry))
    coarse = patterns[::4, ::4]  # 4x4 probe positions over 2x2 cells: 2 px per cell
    io.write_dataset(tmp_path / "coarse.h5", coarse, np.full(coarse.shape[:2], 1, np.int8),
                     attrs(name="coarse", **{**geometry, "scan_step_angstrom": 4 * step}))
    for name in ("ru", "coarse"):
        assert main(["virtual-images", str(tmp_path / f"{name}.h5"), "--out", str(tmp_path / f"{name}.npz")]) == 0
    assert main(["predict-cells", "column_fit_adf", str(tmp_path / "ru.npz"), str(tmp_path / "coarse.npz"),
                 "--out", str(tmp_path / "column_fit_adf.npz"), "--metrics", str(tmp_path / "column_fit_adf.json")]) == 0
    fitted, not_applicable = json.loads((tmp_path / "column_fit_adf.json").read_text())
    assert fitted["accuracy"] == 1.0 and fitted["cell_accuracy"] == 1.0 and fitted["cells_answered"] == 4
    assert fitted["angular_error_deg"] < 3 and fitted["majority_class"] == "RU"
    assert np.isnan(not_applicable["accuracy"]) and not_applicable["cell_predictor"].startswith("not applicable: 2.0 scan px")
    with np.load(tmp_path / "column_fit_adf.npz") as grids:
        assert (grids["ru"] == 1).all() and (grids["coarse"] == -1).all()
    assert (tmp_path / "column_fit_adf.record.json").exists()
    # the per-cell figure: one arrow per cell, along RU (45 degrees), on the virtual ADF image
    from polarmap import figures

    fig = figures.cells_from_files(tmp_path / "ru.npz", [tmp_path / "column_fit_adf.npz"], [tmp_path / "column_fit_adf.json"], "ru", tmp_path / "cells")
    quiver = next(c for c in fig.axes[0].collections if c.__class__.__name__ == "Quiver")
    assert quiver.N == 4 and np.degrees(np.arctan2(quiver.V, quiver.U)) == pytest.approx(45, abs=3)
    assert np.nanmin(fig.axes[1].images[0].get_array()) == 1.0  # every probe position right
    assert (tmp_path / "cells.png").exists()
    # a unit-cell model named by a path relative to where the command runs (its models folder)
    import torch

    from polarmap.unitcell import UnitCellNet

    (tmp_path / "models/unit_cell-seed0").mkdir(parents=True)
    torch.save({"kind": "unit_cell", "state_dict": UnitCellNet().state_dict()}, tmp_path / "models/unit_cell-seed0/model.pt")
    monkeypatch.chdir(tmp_path / "models")
    assert main(["predict-cells", "unit_cell-seed0/model.pt", "../ru.npz", "--out", "unit_cell.npz", "--metrics", "unit_cell.json"]) == 0
    answered, = json.loads((tmp_path / "models/unit_cell.json").read_text())
    assert answered["cells_answered"] == 4 and answered["model"] == "unit_cell-seed0/model.pt"
    assert "unit_cell-seed0/model.pt" in json.loads((tmp_path / "models/unit_cell.record.json").read_text())["inputs"]
