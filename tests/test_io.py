import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile

from polarmap import io
from polarmap.classes import CLASS_NAMES
from polarmap.readers import read_acquisition


def attrs(**extra):
    base = dict(
        name="t", classes=["RM"], class_names=list(CLASS_NAMES), thickness_nm=20.0, supercell="2x2x50",
        energy_kev=200.0, semiangle_mrad=24.0, detector_mrad_per_px=3.15, scan_step_angstrom=0.06, source="test",
        scan_symmetries_px="[]",
    )
    return {**base, **extra}


def small_set(rng, shape=(3, 4, 8, 8)):
    return rng.random(shape, dtype=np.float32), np.zeros(shape[:2], dtype=np.int8)


def test_round_trip(tmp_path):
    patterns, labels = small_set(np.random.default_rng(0))
    io.write_dataset(tmp_path / "d.h5", patterns, labels, attrs(classes=["RM", "RD"]))
    with io.open_dataset(tmp_path / "d.h5", check_values=True) as f:
        assert np.array_equal(f["patterns"][()], patterns)
        assert np.array_equal(f["labels"][()], labels)
        assert f["patterns"].chunks == (1, 1, 8, 8)
        meta = io.read_attrs(f)
    assert meta["classes"] == ["RM", "RD"] and meta["class_names"] == list(CLASS_NAMES)
    assert meta["convention"].startswith("col=+x right, row=+y up")


def test_truncated_file_is_a_clear_error(tmp_path):
    patterns, labels = small_set(np.random.default_rng(0), (8, 8, 32, 32))
    io.write_dataset(tmp_path / "d.h5", patterns, labels, attrs())
    data = (tmp_path / "d.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.h5: .*(truncated|cannot be read)"):
        with io.open_dataset(tmp_path / "cut.h5", check_values=True):
            pass


def test_wrong_shape_and_nan_and_unknown_class_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="must be 4-D"):
        io.write_dataset(tmp_path / "a.h5", rng.random((4, 8, 8)), np.zeros((4, 8)), attrs())
    with pytest.raises(ValueError, match="does not match the scan shape"):
        io.write_dataset(tmp_path / "b.h5", rng.random((2, 2, 8, 8)), np.zeros((3, 2)), attrs())
    patterns, labels = small_set(rng)
    patterns[1, 2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        io.write_dataset(tmp_path / "c.h5", patterns, labels, attrs())
    with pytest.raises(ValueError, match="unknown polarization class 'XY'"):
        io.write_dataset(tmp_path / "d.h5", *small_set(rng), attrs(classes=["XY"]))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_files_written_by_others_are_refused_on_open(tmp_path):
    patterns, labels = small_set(np.random.default_rng(2))
    io.write_dataset(tmp_path / "d.h5", patterns, labels, attrs())
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        f["patterns"][0, 0, 0, 0] = np.nan
        f["labels"][0, 0] = 9
    with pytest.raises(ValueError, match="labels holds values outside -1..7"):
        with io.open_dataset(tmp_path / "d.h5"):
            pass
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        f["labels"][0, 0] = 0
    with pytest.raises(ValueError, match=r"NaN or infinite intensities \(scan row 0, column 0\)"):
        with io.open_dataset(tmp_path / "d.h5", check_values=True):
            pass
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["patterns"] = np.zeros((2, 2, 4, 4))
    with pytest.raises(ValueError, match="not a polarmap-4dstem data set"):
        with io.open_dataset(tmp_path / "plain.h5"):
            pass


def write_tiff_folder(folder, patterns, digits=5, start=0):
    folder.mkdir()
    rows, cols = patterns.shape[:2]
    for i in range(rows * cols):
        tifffile.imwrite(folder / f"pattern_{i + start:0{digits}d}.tif", patterns[i // cols, i % cols])


def test_tiff_folder_import_keeps_row_major_order(tmp_path):
    patterns = np.random.default_rng(3).random((3, 5, 16, 16), dtype=np.float32)
    write_tiff_folder(tmp_path / "scan", patterns, start=1)
    io.import_acquisition(read_acquisition(tmp_path / "scan"), tmp_path / "s.h5", attrs(), scan_shape=(3, 5), label="RM")
    with io.open_dataset(tmp_path / "s.h5") as f:  # as displayed (row 0 on top) -> +row up, scan and detector
        assert np.array_equal(f["patterns"][()], patterns[::-1, :, ::-1, :])
        assert (f["labels"][()] == 0).all()


def test_tiff_folder_with_a_missing_pattern_names_it(tmp_path):
    patterns = np.random.default_rng(4).random((4, 4, 8, 8), dtype=np.float32)
    write_tiff_folder(tmp_path / "scan", patterns)
    (tmp_path / "scan" / "pattern_00006.tif").unlink()
    with pytest.raises(ValueError, match="missing TIFF for scan index 6"):
        read_acquisition(tmp_path / "scan")
    assert not (tmp_path / "s.h5").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "info", str(tmp_path / "junk.h5")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "junk.h5: not a readable HDF5 file" in result.stderr
