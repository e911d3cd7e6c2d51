import numpy as np
import pytest

from polarmap import io
from polarmap.experiment import ExperimentSettings, apply, make_experiment_like
from polarmap.pattern import center_of_mass
from test_io import attrs
from test_preprocessing import disc


@pytest.fixture
def clean():
    """A 4x4 scan whose patterns differ: the disc moves with the scan column."""
    return np.stack([[disc(48, centre=(24, 24 + 0.5 * c)) for c in range(4)] for _ in range(4)])


def test_dose_gives_poisson_counts(clean):
    counted = apply(clean, 0.5, ExperimentSettings(dose_e_per_pattern=1e4, seed=1))
    assert np.array_equal(counted, np.round(counted))
    assert counted.sum(axis=(2, 3)).mean() == pytest.approx(1e4, rel=0.02)
    assert not np.array_equal(counted, apply(clean, 0.5, ExperimentSettings(dose_e_per_pattern=1e4, seed=2)))
    assert np.array_equal(counted, apply(clean, 0.5, ExperimentSettings(dose_e_per_pattern=1e4, seed=1)))


def test_descan_moves_the_com_globally_and_linearly(clean):
    moved = apply(clean, 0.5, ExperimentSettings(descan_px=(2.0, -3.0), descan_px_per_scan_px=(0.5, 0, 0, 0)))
    shift = center_of_mass(moved) - center_of_mass(clean)
    assert shift[0, 0] == pytest.approx([2.0, -3.0], abs=0.05)
    assert shift[3, 0] == pytest.approx([3.5, -3.0], abs=0.05)  # + 0.5 px per scan row


def test_background_and_read_noise_and_psf(clean):
    out = apply(clean, 0.5, ExperimentSettings(background_e_per_px=3.0))
    assert out - clean == pytest.approx(np.full_like(clean, 3.0))
    blurred = apply(clean, 0.5, ExperimentSettings(psf_sigma_px=1.5))
    assert blurred.max() < clean.max() and center_of_mass(blurred) == pytest.approx(center_of_mass(clean), abs=0.02)
    noisy = apply(clean, 0.5, ExperimentSettings(read_noise_e=0.5, seed=3))
    assert np.std(noisy - clean) == pytest.approx(0.5, rel=0.05)


def test_source_size_and_jitter_mix_neighbouring_positions(clean):
    mixed = apply(clean, 0.5, ExperimentSettings(source_size_angstrom=0.5))
    com = center_of_mass(mixed)[0, :, 1]
    assert np.ptp(com) < np.ptp(center_of_mass(clean)[0, :, 1])  # CoM contrast across the scan drops
    jittered = apply(clean, 0.5, ExperimentSettings(scan_jitter_angstrom=0.3, seed=4))
    assert not np.allclose(jittered, clean) and jittered.sum() == pytest.approx(clean.sum(), rel=1e-5)


def test_experiment_like_file_keeps_labels_and_records_settings(tmp_path, clean):
    io.write_dataset(tmp_path / "c.h5", clean, np.full((4, 4), 7, np.int8), attrs(classes=["RD"]))
    settings = ExperimentSettings(dose_e_per_pattern=5000, seed=9)
    make_experiment_like(tmp_path / "c.h5", tmp_path / "e.h5", settings, "4E", ["RM", "RD"])
    with io.open_dataset(tmp_path / "e.h5") as f:
        meta = io.read_attrs(f)
        assert (f["labels"][()] == 7).all()
        assert np.array_equal(f["patterns"][()], apply(clean, 0.06, settings))
    assert meta["name"] == "4E" and meta["classes"] == ["RM", "RD"] and meta["experiment_like"]
    assert meta["experiment_settings"]["dose_e_per_pattern"] == 5000


@pytest.mark.parametrize("rows_per_block", [1, 3, 8])
def test_streamed_scan_effects_equal_the_whole_scan_transform(clean, rows_per_block):
    """Source size and jitter mix scan rows; streamed in blocks (with the rows around each read
    too) they give what the transform of the whole scan in memory gives."""
    from scipy import ndimage

    from polarmap.experiment import _interpolate_scan, experiment_rows

    settings = ExperimentSettings(source_size_angstrom=0.4, scan_jitter_angstrom=0.3, seed=5)
    step = 0.5
    blurred = ndimage.gaussian_filter(clean.astype(np.float32), sigma=(0.8, 0.8, 0, 0), mode="wrap")
    error = np.random.default_rng([5, 1]).normal(0.0, 0.6, size=(2, 4, 4))
    grid_rows, grid_cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    whole = _interpolate_scan(blurred, grid_rows + error[0], grid_cols + error[1]).astype(np.float32)
    streamed = np.concatenate([block for _, block in experiment_rows(clean.__getitem__, (4, 4), step, settings, rows_per_block)])
    assert np.array_equal(streamed, whole)
