"""`polarmap map` on files written as a detector would: a real abTEM scan (RU, 10 nm) as
displayed, the same scan with its detector turned 30 degrees and mirrored, and re-binned onto
another detector (1.0 mrad/px, 256 px, disc 20 px off centre, a 1.5 px descan plane, three hot
pixels). The scan's polarization is far below what one pattern shows at 10 nm, so the model here
learns what one pattern does show: the class of its beam shift (the direction of its centre of
mass), on the scan and its quarter turns. A turn or mirror the map got wrong would turn its
answers; a disc off its origin would shift them."""

import json
import re
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
from scipy import ndimage

from polarmap import io
from polarmap.classes import angle_to_class
from polarmap.pattern import center_of_mass
from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
from polarmap.splits import SplitSettings, make_split
from polarmap.training import TrainSettings, calibrate_ood, train
from test_io import attrs
from test_readers import REALDATA, needs_realdata
from test_virtual import simulated_scan  # noqa: F401  (the fixture: RU, 10 nm, 16x16 positions)

CROP_PX = 32


def com_classes(patterns):
    """The class of each pattern's centre of mass about the scan's mean (+row up)."""
    shift = center_of_mass(patterns) - center_of_mass(patterns).mean(axis=(0, 1))
    return angle_to_class(np.arctan2(shift[..., 0], shift[..., 1])).astype(np.int8)


@pytest.fixture(scope="module")
def trained(simulated_scan, tmp_path_factory):  # noqa: F811
    atoms, patterns, step, mrad = simulated_scan
    folder = tmp_path_factory.mktemp("mapping")
    preprocessed = []
    # quarter turns, and small turns by interpolation, so that the model has seen interpolated
    # patterns (its out-of-distribution threshold would otherwise flag any resampling)
    for k in range(4):
        for degrees in (0, 11, -17):
            turned = np.rot90(patterns, k, axes=(-2, -1))
            if degrees:
                flat = turned.reshape(-1, *turned.shape[-2:])
                turned = np.stack([ndimage.rotate(p, degrees, reshape=False, order=3) for p in flat]).clip(0).reshape(turned.shape)
            name = f"train_{k}_{degrees}"
            io.write_dataset(folder / f"{name}.h5", turned, com_classes(turned),
                             attrs(name=name, classes=[], supercell="2x2x25", detector_mrad_per_px=mrad, scan_step_angstrom=step))
            preprocess_dataset(folder / f"{name}.h5", folder / f"p_{name}.h5", PreprocessSettings(crop_px=CROP_PX), True, progress=False)
            preprocessed.append(folder / f"p_{name}.h5")
    split = folder / "split.npz"
    make_split(preprocessed, split, "none", 888, SplitSettings(blocked=False), SplitSettings(fractions=(0.9, 0.1), blocked=False))
    record = train(split, preprocessed, folder / "model", TrainSettings(encoder="conv", objective="classification", configuration="none",
                                                                          max_epochs=12, lr=1e-3), progress=False)
    assert record["validation_accuracy"] > 0.7  # it learns (chance: 0.125)
    calibrate_ood(folder / "model/model.pt", split, preprocessed, folder / "ood.npz")
    return folder / "model/model.pt", folder / "ood.npz", mrad, step


def as_displayed(patterns):
    """Frames as a detector file holds them: scan row 0 and detector row 0 on top."""
    return np.ascontiguousarray(patterns[::-1, :, ::-1, :])


def write_file(path, patterns):
    with h5py.File(path, "w") as f:
        f["frames"] = as_displayed(patterns)


def run_map(path, trained, out, *extra):
    model, ood, mrad, step = trained
    command = [sys.executable, "-m", "polarmap.cli", "map", str(path), "--model", str(model), "--ood", str(ood), "--out", str(out),
               "--scan-step-angstrom", str(step), *map(str, extra)]
    return subprocess.run(command, capture_output=True, text=True)


def classes_of(out):
    with np.load(out / "predictions.npz", allow_pickle=False) as data:
        return data["classes"]


def test_map_of_a_scan_file(trained, simulated_scan, tmp_path):  # noqa: F811
    """One command from a detector file to a map: the scan's orientation found unturned, the
    patterns' own classes the answer, every output written, with provenance."""
    _, patterns, step, mrad = simulated_scan
    write_file(tmp_path / "scan.h5", patterns)
    result = run_map(tmp_path / "scan.h5", trained, tmp_path / "map", "--mrad-per-px", mrad)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (classes_of(tmp_path / "map") == com_classes(patterns)).mean() >= 0.7 and summary["unknown_fraction"] < 0.1
    assert abs(summary["scan_rotation_deg"]) < 1 and not summary["scan_flip"] and summary["scan_orientation_from"] == "least curl"
    assert summary["measured_semiangle_mrad"] == pytest.approx(24, rel=0.1)
    assert summary["cell_px"] == pytest.approx(8, rel=0.05)  # a_pc over the 0.5 A step
    for name in ("map.png", "map.pdf", "predictions.npz", "predictions.tsv", "provenance.json", "preprocessed.h5"):
        assert (tmp_path / "map" / name).is_file(), name
    assert not (tmp_path / "map" / "imported.h5").exists()  # no raw copy
    lines = (tmp_path / "map" / "predictions.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:6] == ["row", "col", "class", "angle_deg", "confidence", "ood_score"] and len(lines) == 1 + 256
    with np.load(tmp_path / "map" / "predictions.npz") as data:
        assert ((data["confidence"] >= 0) & (data["confidence"] <= 1)).all() and np.median(data["confidence"]) > 0.5
    provenance = json.loads((tmp_path / "map" / "provenance.json").read_text())
    assert provenance["calibration_sources"]["detector_mrad_per_px"] == "given"
    assert provenance["calibration_sources"]["energy_kev"] == "unknown"  # not silently 200 keV
    assert provenance["settings"]["model_sampling"]["crop_px"] == CROP_PX


def test_a_map_never_touches_its_input_even_one_named_like_its_working_copy(trained, simulated_scan, tmp_path):  # noqa: F811
    """The scan as `map/imported.h5`, mapped into `map/`: the map is made, the user's file is
    byte for byte as it was, and no working file is left beside it."""
    _, patterns, step, mrad = simulated_scan
    (tmp_path / "map").mkdir()
    write_file(tmp_path / "map" / "imported.h5", patterns)
    before = (tmp_path / "map" / "imported.h5").read_bytes()
    result = run_map(tmp_path / "map" / "imported.h5", trained, tmp_path / "map", "--mrad-per-px", mrad)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "map" / "imported.h5").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == sorted(["imported.h5", "map.png", "map.pdf", "predictions.npz", "predictions.tsv",
                                                                           "provenance.json", "preprocessed.h5", "cells.csv"])


def test_the_map_streams_the_file_and_preprocesses_it_as_an_import_would(trained, simulated_scan, tmp_path, monkeypatch):  # noqa: F811
    """A turned and mirrored detector with hot pixels (and its own mask of one of them): the map
    reads the file a few scan rows at a time and writes no copy of its raw frames (every data set
    it creates holds crops), and the patterns the model sees, their beam shift, ADF and origins,
    are bit for bit those of `polarmap import` then `polarmap preprocess`."""
    from polarmap import mapping
    from polarmap.readers import Acquisition, read_acquisition

    _, patterns, step, mrad = simulated_scan
    flat = patterns[..., :, ::-1].reshape(-1, *patterns.shape[-2:])
    turned = np.stack([ndimage.rotate(p, 30, reshape=False, order=3) for p in flat]).clip(0).reshape(patterns.shape) * 1e4
    turned[:, :, 40, 20] = turned[:, :, 100, 7] = 50 * turned.max()
    write_file(tmp_path / "scan.h5", turned.astype(np.float32))
    mask = np.zeros(patterns.shape[2:], bool)
    mask[127 - 100, 7] = True  # the file's own mask, as displayed
    acquisition = read_acquisition(tmp_path / "scan.h5")
    acquisition = Acquisition(acquisition.path, acquisition.frames, acquisition.scan_shape_from, acquisition.calibration, mask)
    monkeypatch.setattr(mapping, "read_acquisition", lambda *args, **kwargs: acquisition)
    created = []
    create = io.create_dataset_file
    monkeypatch.setattr(io, "create_dataset_file", lambda path, scan, detector, *rest: created.append(tuple(detector)) or create(path, scan, detector, *rest))
    model, ood, _, _ = trained
    mapping.map_acquisition(tmp_path / "scan.h5", model, tmp_path / "map", ood, job={"detector_mrad_per_px": mrad, "scan_step_angstrom": step},
                            progress=False)
    assert created == [(CROP_PX, CROP_PX)]
    job = {**{key: None for key in ("scan_shape", "label")}, "name": "scan", "format": "auto", "dataset": "", "accepted": [], "thickness_nm": 0.0,
           "supercell": "experimental", "source": "detector", "path": str(tmp_path / "scan.h5"), "detector_mrad_per_px": mrad, "scan_step_angstrom": step}
    io.import_acquisition(acquisition, tmp_path / "imported.h5", io.acquisition_attrs(job, acquisition), progress=False)
    provenance = json.loads((tmp_path / "map" / "provenance.json").read_text())
    settings = PreprocessSettings(crop_px=CROP_PX, mrad_per_px=provenance["settings"]["model_sampling"]["detector_mrad_per_px"])
    preprocess_dataset(tmp_path / "imported.h5", tmp_path / "preprocessed.h5", settings, False, progress=False)
    with h5py.File(tmp_path / "map" / "preprocessed.h5") as streamed, h5py.File(tmp_path / "preprocessed.h5") as imported:
        assert streamed.attrs["scan_flip"] and streamed.attrs["bad_pixel_count"] >= 2
        for key in ("bad_pixel_count", "scan_rotation_deg", "descan_plane_px", "disc_radius_px"):
            assert streamed.attrs[key] == imported.attrs[key], key
        for key in ("patterns", "beam_shift", "adf", "origin", "com"):
            assert np.array_equal(streamed[key][()], imported[key][()]), key


def tiled(patterns, times=3):
    """The simulated supercell scan repeated: one period of a periodic crystal is exact, so a
    3x3 tiling is a 6x6-cell scan of the same crystal."""
    return np.tile(patterns, (times, times, 1, 1))


def read_cells(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_per_cell_map_without_a_model(simulated_scan, tmp_path):  # noqa: F811
    """`polarmap map FILE` alone: the lattice found in the scan's own ADF (6x6 cells of a_pc, square,
    unturned), every cell whole in the scan a vector in pm, RU, of the length column fitting
    measures on the simulation's known cells, under Poisson noise of 1e5 electrons per pattern;
    its CSV read back as Atomap and TEMUL plot it (x right, y down) gives the arrows of the figure."""
    from polarmap.columns import fit_cells
    from polarmap.virtual import annular_mask, virtual_image

    atoms, patterns, step, mrad = simulated_scan
    centre = np.array(patterns.shape[-2:]) // 2
    truth = fit_cells(virtual_image(patterns, annular_mask(patterns.shape[-2:], centre, mrad, 60, 150)), atoms.info["a_pc_angstrom"] / step,
                      step, periodic=True).displacement_angstrom.mean(axis=0) * 100  # (row, col) pm, +row up: RU, 10.6 pm
    scan = tiled(patterns)
    counts = np.random.default_rng(1).poisson(scan / scan.sum(axis=(-2, -1), keepdims=True) * 1e5).astype(np.float32)
    write_file(tmp_path / "scan.h5", counts)
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(tmp_path / "scan.h5"), "--out", str(tmp_path / "cells"),
                             "--mrad-per-px", str(mrad), "--scan-step-angstrom", str(step)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["cells"]
    lattice = summary["lattice"]
    assert lattice["cell_angstrom"] == pytest.approx(atoms.info["a_pc_angstrom"], rel=0.005)
    assert abs(lattice["rotation_deg"]) < 0.5 and abs(lattice["shear_deg"]) < 0.5 and lattice["indexing"] == "good"
    rows = read_cells(tmp_path / "cells" / "cells.csv")
    assert len(rows) == summary["cells"] >= 16 and summary["left_out_at_edge"] > 0
    assert sum(row["class"] == "RU" for row in rows) >= 0.95 * len(rows)
    # Atomap/TEMUL: x right, y down as displayed; v positive downwards, so RU (up and right) has v < 0
    measured = np.array([[-float(row["v_pm"]), float(row["u_pm"])] for row in rows])  # back to (row up, col)
    assert np.median(np.hypot(*(measured - truth).T)) < 2.0
    assert np.median([float(row["uncertainty_pm"]) for row in rows]) < 2.0
    for name in ("cells.png", "cells.pdf", "provenance.json"):
        assert (tmp_path / "cells" / name).is_file()
    provenance = json.loads((tmp_path / "cells" / "provenance.json").read_text())
    assert provenance["cells"]["lattice"]["vectors_px"] == lattice["vectors_px"]


def test_the_per_cell_map_of_a_crystal_turned_against_a_drifting_scan(tmp_path):
    """An independent LD crystal (4x4x25 cells, 10 nm, K/Na at random; abTEM PRISM, 128 px
    patterns) scanned 48x48 at 8 px per cell, the scan turned 10 degrees against the crystal with a
    3 % linear drift, written as a Merlin file with the detector turned a quarter and mirrored and
    1e5 electrons per pattern: the lattice's angle and shear found within 0.5 degree, at least 95 %
    of the cells' vectors in LD's bin, and none of the cells the map answers wrong."""
    from polarmap.simulation import SimulationSettings, _Simulator, detector_mrad_per_px, geometry, scan_positions
    from polarmap.structures import StructureSettings, build_supercell
    from test_readers import write_mib

    atoms = build_supercell((4, 4, 25), "LD", StructureSettings(a_site_order="random", a_site_seed=7))
    settings = SimulationSettings(method="prism", gpts_per_cell=64)  # the ADF ring (60-150 mrad) within abTEM's band limit
    geo = geometry(atoms, settings)
    step, scan = geo.a_pc / 8, (48, 48)
    patterns = _Simulator(atoms, geo, settings).at(scan_positions(scan, step, angle_deg=10.0, drift=0.03)).reshape(*scan, 128, 128)
    recorded = np.rot90(patterns, 1, axes=(2, 3))[..., ::-1]
    counts = np.random.default_rng(5).poisson(recorded / recorded.sum(axis=(-2, -1), keepdims=True) * 1e5)
    write_mib(tmp_path / "scan.mib", as_displayed(counts)[..., ::-1, :].reshape(-1, 128, 128))  # a Merlin's rows bottom-up
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(tmp_path / "scan.mib"), "--out", str(tmp_path / "cells"),
                             "--scan-shape", "48", "48", "--mrad-per-px", str(detector_mrad_per_px(geo.a_pc, settings)),
                             "--scan-step-angstrom", str(step)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lattice = json.loads(result.stdout)["cells"]["lattice"]
    # the image of a scan turned +10 degrees shows the crystal turned -10; the drift shears it by atan(0.03)
    assert abs(lattice["rotation_deg"] + 10) < 0.5 and abs(abs(lattice["shear_deg"]) - np.degrees(np.arctan(0.03))) < 0.5, lattice
    rows = read_cells(tmp_path / "cells" / "cells.csv")
    in_bin = [angle_to_class(np.radians(float(row["angle_deg"]))) == 5 for row in rows]  # LD: 225 degrees
    assert len(rows) >= 16 and np.mean(in_bin) >= 0.95
    assert all(row["class"] in ("LD", "unknown") for row in rows)


@pytest.fixture(scope="module")
def unit_cell_model(simulated_scan, tmp_path_factory):  # noqa: F811
    """A unit-cell model trained as the workflow trains one (windows of the known cells, jittered,
    under the 8 symmetries of the square) on the fixture's own virtual images: RU and its turns."""
    from polarmap.cells import ScanCells
    from polarmap.imaging import scan_virtual_images
    from polarmap.unitcell import UnitCellSettings, cell_corners_px, train_unit_cell_model

    atoms, patterns, step, mrad = simulated_scan
    images = scan_virtual_images(patterns, attrs(name="RU", classes=["RU"], supercell="2x2x25", detector_mrad_per_px=mrad, scan_step_angstrom=step),
                                 "fixture")
    a_pc = atoms.info["a_pc_angstrom"]
    source = {"adf": images["adf"], "com": images["com_mrad"], "cell_px": a_pc / step,
              "corners": cell_corners_px(ScanCells(step, (0.0, 0.0), a_pc, (2, 2))), "label": 1}
    path = tmp_path_factory.mktemp("unit_cell") / "model.pt"
    record = train_unit_cell_model([source], [source], path, UnitCellSettings(epochs=20), learned_min_accuracy=0.9)
    assert record["learned"]
    return path


@pytest.mark.parametrize("quarter_turns, expected", [(0, "RU"), (1, "LU")])
def test_the_unit_cell_model_answers_for_the_cells_found(simulated_scan, unit_cell_model, tmp_path, quarter_turns, expected):  # noqa: F811
    """`polarmap map --unit-cell-model`: the model's answer for every cell of the lattice found,
    beside column fitting's, on the RU scan tiled to 6x6 cells with 1e5 electrons per pattern, and
    on the same crystal turned a quarter counter-clockwise (scan and detector together: LU)."""
    _, patterns, step, mrad = simulated_scan
    # a quarter turn counter-clockwise with +row up: new[r, c] = old[-c, r] (np.rot90 with k=-1)
    scan = np.rot90(np.rot90(tiled(patterns), -quarter_turns, axes=(0, 1)), -quarter_turns, axes=(2, 3))
    counts = np.random.default_rng(4).poisson(scan / scan.sum(axis=(-2, -1), keepdims=True) * 1e5).astype(np.float32)
    write_file(tmp_path / "scan.h5", counts)
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(tmp_path / "scan.h5"), "--out", str(tmp_path / "cells"),
                             "--mrad-per-px", str(mrad), "--scan-step-angstrom", str(step), "--unit-cell-model", str(unit_cell_model)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["cells"]
    rows = read_cells(tmp_path / "cells" / "cells.csv")
    assert sum(row["class"] == expected for row in rows) >= 0.95 * len(rows)
    assert sum(row["unit_cell_class"] == expected for row in rows) >= 0.95 * len(rows)
    assert summary["agreement_with_unit_cell"] >= 0.9 and summary["unit_cell_counts"][expected] >= 0.95 * summary["cells"]
    assert all(row["unit_cell_agree"] == str(row["unit_cell_class"] == row["class"]).lower() for row in rows)


@pytest.mark.parametrize("case, message", [
    ("vacuum", "no lattice: the image has no periodic contrast"),
    ("coarse", r"a unit cell spans 2\.0 scan px: at least 4 are needed"),
    ("no step", r"no scan step in the file; give it \(--scan-step-angstrom\)"),
])
def test_a_scan_without_cells_is_said_in_one_line(simulated_scan, tmp_path, case, message):  # noqa: F811
    _, patterns, step, mrad = simulated_scan
    scan = {"vacuum": np.tile(patterns.mean(axis=(0, 1)), (24, 24, 1, 1)), "coarse": tiled(patterns, 3)[::4, ::4],
            "no step": tiled(patterns)}[case]
    write_file(tmp_path / "scan.h5", scan * 1e5)
    step_option = [] if case == "no step" else ["--scan-step-angstrom", str(step * (4 if case == "coarse" else 1))]
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(tmp_path / "scan.h5"), "--out", str(tmp_path / "out"),
                             "--mrad-per-px", str(mrad), *step_option], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_turned_and_mirrored_detector_gives_the_same_map(trained, simulated_scan, tmp_path):  # noqa: F811
    """The detector turned 30 degrees and mirrored: the turn recovered within a degree, the mirror
    found, and the map the same as the unturned one's."""
    _, patterns, step, mrad = simulated_scan
    write_file(tmp_path / "scan.h5", patterns)
    mirrored = patterns[..., :, ::-1].reshape(-1, *patterns.shape[-2:])
    turned = np.stack([ndimage.rotate(p, 30, reshape=False, order=3) for p in mirrored]).clip(0).reshape(patterns.shape)  # counts >= 0
    write_file(tmp_path / "turned.h5", turned)
    assert run_map(tmp_path / "scan.h5", trained, tmp_path / "straight", "--mrad-per-px", mrad).returncode == 0
    result = run_map(tmp_path / "turned.h5", trained, tmp_path / "turned", "--mrad-per-px", mrad)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # scipy turns the displayed frame clockwise with +row up; mirrored first: -30 in our convention
    assert summary["scan_flip"] and summary["scan_rotation_deg"] == pytest.approx(-30, abs=1)
    assert (classes_of(tmp_path / "turned") == classes_of(tmp_path / "straight")).mean() >= 0.95


def test_another_detector_gives_the_same_predictions(trained, simulated_scan, tmp_path):  # noqa: F811
    """Re-binned to 1.0 mrad/px on 256 px, the disc 20 px off centre, a descan plane of 1.5 px across
    the scan and three hot pixels: the same answer for at least 95 % of patterns."""
    _, patterns, step, mrad = simulated_scan
    write_file(tmp_path / "scan.h5", patterns)
    detector = np.arange(256.0)
    other = np.empty((*patterns.shape[:2], 256, 256), np.float32)
    for (row, col), pattern in np.ndenumerate(patterns[..., 0, 0]):
        offset = np.array([20.0, -12.0]) + 1.5 * np.array([row, col]) / (patterns.shape[0] - 1)
        coordinates = np.meshgrid(64 + (detector - 128 - offset[0]) / mrad, 64 + (detector - 128 - offset[1]) / mrad, indexing="ij")
        other[row, col] = ndimage.map_coordinates(patterns[row, col].astype(np.float64), coordinates, order=3).clip(0) * 1e6  # in counts
    for hot in ((150, 110), (40, 200), (140, 118)):
        other[:, :, hot[0], hot[1]] = 50 * other.max()
    write_file(tmp_path / "other.h5", other)
    assert run_map(tmp_path / "scan.h5", trained, tmp_path / "native", "--mrad-per-px", mrad).returncode == 0
    result = run_map(tmp_path / "other.h5", trained, tmp_path / "other", "--mrad-per-px", 1.0)
    assert result.returncode == 0, result.stderr
    provenance = json.loads((tmp_path / "other" / "provenance.json").read_text())
    assert provenance["bad_pixel_count"] == 3
    assert (classes_of(tmp_path / "other") == classes_of(tmp_path / "native")).mean() >= 0.95


def test_what_a_map_refuses_in_one_line(trained, simulated_scan, tmp_path):  # noqa: F811
    """No calibration, a probe of another size, no workers, a dark scan: one line each, nothing written."""
    _, patterns, step, mrad = simulated_scan
    write_file(tmp_path / "scan.h5", patterns)
    cases = {
        (): "no detector calibration (mrad per pixel) in the file; give it (--mrad-per-px)",
        ("--mrad-per-px", 2 * mrad): "its bright-field disc spans 4",  # 48 mrad, twice the model's
        ("--mrad-per-px", mrad, "--workers", 0): "--workers 0: give at least 1",
    }
    for extra, message in cases.items():
        result = run_map(tmp_path / "scan.h5", trained, tmp_path / "out", *extra)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written
    write_file(tmp_path / "dark.h5", np.zeros_like(patterns))
    result = run_map(tmp_path / "dark.h5", trained, tmp_path / "dark", "--mrad-per-px", mrad)
    assert result.returncode == 2 and "all zero: not usable diffraction" in result.stderr
    assert not (tmp_path / "dark" / "predictions.npz").exists()


@pytest.fixture(scope="module")
def pacbed_file(tmp_path_factory):
    """A PACBED library at the simulated scan's probe and sampling, 1-30 nm."""
    from polarmap.atomic import save_npz_atomically
    from polarmap.simulation import PacbedLibrarySettings, SimulationSettings, pacbed_library

    path = tmp_path_factory.mktemp("pacbed") / "library.npz"
    save_npz_atomically(path, pacbed_library(SimulationSettings(method="multislice", gpts_per_cell=64),
                                             PacbedLibrarySettings(max_thickness_nm=30, frozen_phonon_configs=4)))
    return path


def test_the_map_reads_the_thickness_and_flags_a_model_trained_at_another(trained, simulated_scan, pacbed_file, tmp_path):  # noqa: F811
    """The scan's thickness from its PACBED (10 nm, counts of 1e5 electrons per pattern), in the
    provenance; the same model with a record saying it was trained at 50 nm is flagged: a
    warning and the provenance (and the map's title)."""
    import torch

    model, ood, mrad, step = trained
    saved = torch.load(model, map_location="cpu", weights_only=True)
    sampling = json.loads(saved["sampling"])
    assert sampling["training_thickness_nm"] == [20.0]  # the training sets' own thickness, recorded
    torch.save({**saved, "sampling": json.dumps({**sampling, "training_thickness_nm": [50.0]})}, tmp_path / "model50.pt")
    scan = tiled(simulated_scan[1], 2)
    counts = np.random.default_rng(2).poisson(scan / scan.sum(axis=(-2, -1), keepdims=True) * 1e5).astype(np.float32)
    write_file(tmp_path / "scan.h5", counts)
    probe = ("--mrad-per-px", mrad, "--energy-kev", 200, "--semiangle-mrad", 24, "--pacbed", pacbed_file)
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(tmp_path / "scan.h5"), "--model", str(tmp_path / "model50.pt"),
                             "--out", str(tmp_path / "out"), "--scan-step-angstrom", str(step), *map(str, probe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "the model was trained at 50 nm: its answers are outside its domain" in result.stderr
    thickness = json.loads((tmp_path / "out" / "provenance.json").read_text())["thickness"]
    assert abs(thickness["thickness_nm"] - 10.0) < 1.1 and thickness["model_thickness_nm"] == [50.0]
    assert "outside its domain" in thickness["outside_model"]
    # without a library the thickness is not estimated, and says why
    result = run_map(tmp_path / "scan.h5", trained, tmp_path / "plain", "--mrad-per-px", mrad)
    assert result.returncode == 0 and "no PACBED library given" in json.loads(result.stdout)["thickness"]["not estimated"]


def test_a_pacbed_library_of_another_probe_is_refused(trained, simulated_scan, pacbed_file, tmp_path):  # noqa: F811
    _, patterns, step, mrad = simulated_scan
    write_file(tmp_path / "scan.h5", tiled(patterns, 2) * 1e5)
    (tmp_path / "damaged.npz").write_bytes(pacbed_file.read_bytes()[:1000])
    cases = {
        ("--energy-kev", 300, "--semiangle-mrad", 24, "--pacbed", pacbed_file): "simulated at 200 keV, the scan at 300 keV; make a library",
        ("--semiangle-mrad", 24, "--pacbed", pacbed_file): "no energy_kev in the file; give it (--energy-kev)",
        ("--energy-kev", 200, "--semiangle-mrad", 24, "--pacbed", tmp_path / "damaged.npz"): "damaged.npz: not a readable PACBED library",
    }
    for extra, message in cases.items():
        result = subprocess.run([sys.executable, "-m", "polarmap.cli", "map", str(tmp_path / "scan.h5"), "--out", str(tmp_path / "out"),
                                 "--mrad-per-px", str(mrad), "--scan-step-angstrom", str(step), *map(str, extra)], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_vacuum_scan_is_unknown(trained, simulated_scan, tmp_path):  # noqa: F811
    """A vacuum scan (the probe's disc alone, a little descan): every pattern unknown."""
    _, patterns, step, mrad = simulated_scan
    size = patterns.shape[-1]
    rows, cols = np.indices((size, size))
    disc = (np.hypot(rows - size // 2, cols - size // 2) <= 24 / mrad).astype(np.float32) * 100 + 0.1
    vacuum = np.broadcast_to(disc, patterns.shape).copy()
    write_file(tmp_path / "vacuum.h5", vacuum)
    result = run_map(tmp_path / "vacuum.h5", trained, tmp_path / "vacuum", "--mrad-per-px", mrad, "--rotation-deg", 0, "--no-flip")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unknown_fraction"] == 1.0


@needs_realdata
def test_the_detector_test_image_is_refused_or_unknown(trained, tmp_path):
    """The Merlin's test image (9 frames, 3x3): at 1 mrad/px its brightest blob is no 24 mrad disc, a
    one-line refusal; calibrated so that the blob has the model's size, every frame is unknown."""
    with zipfile.ZipFile(REALDATA / "Merlin_Single_Quad.zip") as archive:
        for suffix in (".mib", ".hdr"):
            archive.extract(f"Quad_9_Frame_CounterDepth_24_Rows_256{suffix}", tmp_path)
    test_image = tmp_path / "Quad_9_Frame_CounterDepth_24_Rows_256.mib"
    result = run_map(test_image, trained, tmp_path / "refused", "--mrad-per-px", 1.0, "--rotation-deg", 0, "--no-flip")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "the model's 24.0 mrad: a different probe" in result.stderr, result.stderr
    blob_mrad = float(re.search(r"its bright-field disc spans ([0-9.]+) mrad at 1 mrad/px", result.stderr).group(1))
    result = run_map(test_image, trained, tmp_path / "unknown", "--mrad-per-px", 24 / blob_mrad, "--rotation-deg", 0, "--no-flip")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unknown_fraction"] == 1.0
