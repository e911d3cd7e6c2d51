"""Every reader on a small file the test writes, including a Merlin .mib in its binary layout."""

import h5py
import numpy as np
import pytest
import tifffile

from polarmap import io
from polarmap.config import load_config
from test_io import attrs


@pytest.fixture
def scan():
    return np.random.default_rng(5).integers(0, 1000, size=(3, 4, 16, 16)).astype(np.float32)


def read_back(path):
    with io.open_dataset(path, check_values=True) as f:
        return f["patterns"][()], f["labels"][()]


def test_tiff_stack_multi_page(tmp_path, scan):
    tifffile.imwrite(tmp_path / "stack.tif", scan.reshape(-1, 16, 16))  # one page per frame
    io.import_tiff_stack(tmp_path / "stack.tif", tmp_path / "s.h5", attrs(), scan_shape=(3, 4), label="RD")
    patterns, labels = read_back(tmp_path / "s.h5")
    assert np.array_equal(patterns, scan) and (labels == 7).all()


def test_tiff_stack_interrupted_acquisition_keeps_full_rows(tmp_path, scan):
    tifffile.imwrite(tmp_path / "stack.tif", scan.reshape(-1, 16, 16)[:10])  # stopped in row 3
    with pytest.warns(UserWarning, match="10 frames for a 3x4 scan .* keeping the first 2 full rows"):
        io.import_tiff_stack(tmp_path / "stack.tif", tmp_path / "s.h5", attrs(), scan_shape=(3, 4))
    patterns, _ = read_back(tmp_path / "s.h5")
    assert np.array_equal(patterns, scan[:2])


def test_corrupt_tiff_is_named(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x07" * 50)
    with pytest.raises(ValueError, match=r"bad\.tif: unreadable TIFF"):
        io.import_tiff_stack(tmp_path / "bad.tif", tmp_path / "s.h5", attrs(), scan_shape=(1, 1))
    assert not (tmp_path / "s.h5").exists()


def write_mib(path, frames):
    """Merlin frames: a 384-byte ASCII header then big-endian uint16 pixels, frame after frame."""
    with open(path, "wb") as f:
        for i, frame in enumerate(frames, start=1):
            fields = ["MQ1", f"{i:06d}", "00384", "01", f"{frame.shape[1]:04d}", f"{frame.shape[0]:04d}", "U16",
                      "   1x1", "01", "2026-11-22T10:00:00.000000000Z", "1000000ns", "0", "0"]
            header = ",".join(fields).encode()
            f.write(header + b"\x00" * (384 - len(header)))
            f.write(frame.astype(">u2").tobytes())


def test_merlin_mib(tmp_path, scan):
    write_mib(tmp_path / "scan.mib", scan.reshape(-1, 16, 16))
    io.import_mib(tmp_path / "scan.mib", tmp_path / "m.h5", attrs(), scan_shape=(3, 4), label="LU")
    patterns, labels = read_back(tmp_path / "m.h5")
    assert np.array_equal(patterns, scan[..., ::-1, :])  # RosettaSciIO's row flip
    assert (labels == 3).all()


def test_merlin_mib_truncated_mid_frame(tmp_path, scan):
    write_mib(tmp_path / "scan.mib", scan.reshape(-1, 16, 16))
    data = (tmp_path / "scan.mib").read_bytes()
    frame_bytes = 384 + 16 * 16 * 2
    (tmp_path / "cut.mib").write_bytes(data[: 9 * frame_bytes + 100])  # 9 frames and a bit
    with pytest.warns(UserWarning, match="keeping the first 2 full rows"):
        io.import_mib(tmp_path / "cut.mib", tmp_path / "m.h5", attrs(), scan_shape=(3, 4))
    assert read_back(tmp_path / "m.h5")[0].shape == (2, 4, 16, 16)


@pytest.mark.parametrize("layout", ["4d", "3d"])
def test_hdf5_emd(tmp_path, scan, layout):
    with h5py.File(tmp_path / "in.emd", "w") as f:  # py4DSTEM-like nesting
        group = f.create_group("4DSTEM_experiment/data/datacubes/datacube_0")
        group["data"] = scan if layout == "4d" else scan.reshape(-1, 16, 16)
    io.import_hdf5(tmp_path / "in.emd", tmp_path / "h.h5", attrs(), scan_shape=None if layout == "4d" else (3, 4))
    assert np.array_equal(read_back(tmp_path / "h.h5")[0], scan)


def test_hdf5_mismatched_scan_shape(tmp_path, scan):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = scan
    with pytest.raises(ValueError, match=r"in\.h5: scan shape \(4, 3\) does not match the file's \(3, 4\)"):
        io.import_hdf5(tmp_path / "in.h5", tmp_path / "h.h5", attrs(), scan_shape=(4, 3))


def test_experimental_declaration_with_unknown_class(tmp_path):
    (tmp_path / "c.yaml").write_text("datasets:\n  experimental:\n    5E: {path: x.mib, format: mib, accepted: [RM, UP]}\n")
    with pytest.raises(ValueError, match=r"c\.yaml: invalid value for 'datasets.experimental.5E.accepted.1'"):
        load_config(tmp_path / "c.yaml")


def test_import_command_by_hand(tmp_path, scan):
    import subprocess
    import sys

    from test_io import write_tiff_folder

    write_tiff_folder(tmp_path / "qstem_out", scan)
    command = [sys.executable, "-m", "polarmap.cli", "import", "tiff_folder", str(tmp_path / "qstem_out"),
               "--out", str(tmp_path / "q.h5"), "--scan-shape", "3", "4", "--label", "MU", "--source", "QSTEM 2.5"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with io.open_dataset(tmp_path / "q.h5") as f:
        meta = io.read_attrs(f)
        assert np.array_equal(f["patterns"][()], scan) and (f["labels"][()] == 2).all()
    assert meta["classes"] == ["MU"] and meta["source"] == "QSTEM 2.5" and np.isnan(meta["detector_mrad_per_px"])
    result = subprocess.run(command[:4] + ["tiff_folder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert result.returncode == 2 and "nowhere: no .tif/.tiff files found" in result.stderr
