"""The specimen's thickness from a scan's PACBED (issue 24): abTEM scans of other classes, other
crystals and other phonon snapshots than the library's, read as a detector would record them
(turned, mirrored, binned, Poisson counts), and a model trained at another thickness flagged."""

import subprocess
import sys

import numpy as np
import pytest

from polarmap import io
from polarmap.pacbed import ThicknessEstimate, estimate_thickness, radial_profile
from polarmap.pattern import center_of_mass
from polarmap.simulation import PacbedLibrarySettings, SimulationSettings, _Simulator, geometry, pacbed_library
from polarmap.structures import build_supercell
from test_virtual import simulated_scan  # noqa: F401  (the fixture: RU, 10 nm, 16x16 positions, a static lattice)

SIMULATION = SimulationSettings(method="multislice", gpts_per_cell=64)


@pytest.fixture(scope="module")
def library():
    """RU, 4 frozen-phonon configurations, 1 to 40 nm in whole cells (~1 nm)."""
    return pacbed_library(SIMULATION, PacbedLibrarySettings(max_thickness_nm=40, step_nm=1, frozen_phonon_configs=4))


@pytest.fixture(scope="module")
def scans(simulated_scan):  # noqa: F811
    """Position-averaged patterns of two scans the library has not seen, with their thickness:
    RU at 10 nm (a static lattice), and LD at 20 nm with two phonon snapshots of another seed."""
    atoms = build_supercell((2, 2, 50), "LD")
    settings = SimulationSettings(method="multislice", gpts_per_cell=64, scan_px=16, frozen_phonon_configs=2, frozen_phonon_seed=5)
    geo = geometry(atoms, settings)
    ld = _Simulator(atoms, geo, settings).rows(0, 16, (geo.extent[0] / 16, geo.extent[1] / 16))
    ru_atoms, ru, _, _ = simulated_scan
    return {"RU": (ru.mean(axis=(0, 1)), geometry(ru_atoms, SIMULATION).thickness_nm), "LD": (ld.mean(axis=(0, 1)), geo.thickness_nm)}


@pytest.mark.parametrize("name", ["RU", "LD"])
def test_the_thickness_of_a_scan_the_library_has_not_seen(library, scans, name):
    pacbed, thickness = scans[name]
    estimate = estimate_thickness(pacbed, np.array(pacbed.shape) // 2, library["mrad_per_px"], library)
    assert abs(estimate.thickness_nm - thickness) < 1.1  # one library step
    assert estimate.low_nm <= thickness + 0.1 and estimate.high_nm >= thickness - 0.1


@pytest.mark.parametrize("name", ["RU", "LD"])
def test_the_thickness_as_a_detector_records_it(library, scans, name):
    """Turned a quarter, mirrored, binned 2x2 (twice the library's mrad per pixel), 1e4
    electrons in each of the scan's patterns, the optical axis from the counts themselves."""
    pacbed, thickness = scans[name]
    recorded = np.rot90(pacbed, 1)[:, ::-1].reshape(64, 2, 64, 2).sum(axis=(1, 3))
    patterns = 256
    counts = np.random.default_rng(3).poisson(recorded / recorded.sum() * 1e4 * patterns).astype(np.float64)
    estimate = estimate_thickness(counts, center_of_mass(counts), 2 * library["mrad_per_px"], library)
    assert abs(estimate.thickness_nm - thickness) < 2.1


def test_the_profile_does_not_depend_on_the_detectors_orientation(library):
    pattern, mrad = library["patterns"][20], library["mrad_per_px"]
    centre = np.array(pattern.shape) // 2
    marker = np.zeros(pattern.shape)
    marker[tuple(centre)] = 1
    profile = radial_profile(pattern, centre, mrad, mrad, 150)
    for transform in (lambda a: np.rot90(a, 1), lambda a: a[::-1], lambda a: np.rot90(a, 3)[:, ::-1]):
        axis = np.argwhere(transform(marker))[0]  # the optical axis moves with the pixels
        assert np.allclose(radial_profile(transform(pattern), axis, mrad, mrad, 150), profile, rtol=1e-6)
    assert not np.allclose(radial_profile(pattern, centre + 2, mrad, mrad, 150), profile, rtol=1e-2)  # the axis matters


def test_a_specimen_thicker_than_the_library_or_no_crystal_is_said(library, scans):
    pacbed, _ = scans["LD"]  # 20 nm against the library's first 15 nm
    thin = {**library, "patterns": library["patterns"][:15], "thickness_nm": library["thickness_nm"][:15]}
    estimate = estimate_thickness(pacbed, np.array(pacbed.shape) // 2, library["mrad_per_px"], thin)
    assert estimate.high_nm == np.inf and "the specimen may be thicker" in estimate.note and estimate.summary()["range_nm"][1] is None
    assert "trained at 10 nm: its answers are outside its domain" in estimate.outside([10.0])
    rows, cols = np.indices(pacbed.shape)
    disc = (np.hypot(rows - 64, cols - 64) * library["mrad_per_px"] < 24) + 1e-3  # a probe through vacuum
    estimate = estimate_thickness(disc, (64, 64), library["mrad_per_px"], library)
    assert np.isnan(estimate.thickness_nm) and "no simulated thickness matches this PACBED" in estimate.note and estimate.outside([50.0]) == ""


def test_a_thickness_that_a_wide_range_fits_is_said_to_be_poorly_determined(library, scans):
    pacbed, _ = scans["RU"]  # 10 nm: a thin crystal's PACBED changes slowly with thickness
    estimate = estimate_thickness(pacbed, np.array(pacbed.shape) // 2, library["mrad_per_px"], library)
    assert estimate.high_nm - estimate.low_nm > 10 and estimate.note.startswith("poorly determined: every thickness from")
    pacbed, _ = scans["LD"]  # 20 nm: a narrow range, no note
    assert estimate_thickness(pacbed, np.array(pacbed.shape) // 2, library["mrad_per_px"], library).note == ""


def test_a_model_trained_at_other_thicknesses_is_flagged():
    estimate = ThicknessEstimate(10.0, 8.0, 12.0, np.zeros(3))
    assert estimate.outside([13.5]) == ""  # within the range and its tolerance of 2.5 nm
    line = estimate.outside([20.0, 50.0])
    assert "about 10 nm thick (8-12 nm from its PACBED)" in line and "trained at 20, 50 nm: its answers are outside its domain" in line
    assert "records no training thickness" in estimate.outside([])


def test_the_library_is_a_thickness_series_at_the_probe_asked(library):
    assert library["patterns"].shape == (len(library["thickness_nm"]), 128, 128)
    assert np.all(np.diff(library["thickness_nm"]) > 0) and library["thickness_nm"][0] > 0 and library["thickness_nm"][-1] >= 40
    assert library["energy_kev"] == 200 and library["semiangle_mrad"] == 24
    # all intensity the probe sent, each thickness (abTEM normalises the probe to 1)
    assert np.allclose(library["patterns"].sum(axis=(1, 2)), 1, atol=0.02)


def test_the_library_command_and_what_it_refuses(tmp_path):
    command = [sys.executable, "-m", "polarmap.cli", "pacbed-library", "--max-thickness-nm", "2", "--frozen-phonons", "0"]
    made = subprocess.run([*command, "--energy-kev", "300", "--out", str(tmp_path / "library.npz")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    library = io.read_pacbed_library(tmp_path / "library.npz")
    assert library["energy_kev"] == 300 and library["semiangle_mrad"] == 24 and library["patterns"].shape[1:] == (256, 256)
    # every 1 nm in whole slices of half a cell, and the whole crystal (whole cells) last
    assert np.allclose(library["thickness_nm"][:2], [0.9959, 1.9918], atol=1e-3) and 2 <= library["thickness_nm"][-1] < 2.4
    refused = subprocess.run([*command, "--energy-kev", "-5", "--out", str(tmp_path / "bad.npz")], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--energy-kev" in refused.stderr and not (tmp_path / "bad.npz").exists()
    np.savez(tmp_path / "foreign.npz", patterns=np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"foreign\.npz: not a PACBED library \(no thickness_nm, mrad_per_px"):
        io.read_pacbed_library(tmp_path / "foreign.npz")
