"""Readers: small files the tests write (TIFF, a Merlin .mib in its binary layout, HDF5, a
RosettaSciIO blockfile), and the real detector files of ../shared/realdata/, compared with what
RosettaSciIO reads."""

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from polarmap import io
from polarmap.config import load_config
from polarmap.readers import read_acquisition
from test_io import attrs

REALDATA = Path(os.environ.get("POLARMAP_REALDATA", Path(__file__).resolve().parents[1].parent / "shared" / "realdata"))
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"no real detector files at {REALDATA} (set POLARMAP_REALDATA)")


@pytest.fixture
def scan():
    return np.random.default_rng(5).integers(1, 1000, size=(3, 4, 16, 16)).astype(np.float32)


def imported(source, out, scan_shape=None, label=None, **read_options):
    io.import_acquisition(read_acquisition(source, **read_options), out, attrs(), scan_shape=scan_shape, label=label)
    with io.open_dataset(out, check_values=True) as f:
        return f["patterns"][()], f["labels"][()]


def displayed(array):
    """What a data set holds for frames given as displayed: both row axes reversed (+row up)."""
    return array[::-1, :, ::-1, :]


def test_tiff_stack_multi_page(tmp_path, scan):
    tifffile.imwrite(tmp_path / "stack.tif", scan.reshape(-1, 16, 16))  # one page per frame
    patterns, labels = imported(tmp_path / "stack.tif", tmp_path / "s.h5", scan_shape=(3, 4), label="RD")
    assert np.array_equal(patterns, displayed(scan)) and (labels == 7).all()


def test_tiff_stack_interrupted_acquisition_keeps_full_rows(tmp_path, scan):
    tifffile.imwrite(tmp_path / "stack.tif", scan.reshape(-1, 16, 16)[:10])  # stopped in row 3
    with pytest.warns(UserWarning, match="10 frames for a 3x4 scan .* keeping the first 2 full rows"):
        patterns, _ = imported(tmp_path / "stack.tif", tmp_path / "s.h5", scan_shape=(3, 4))
    assert np.array_equal(patterns, displayed(scan[:2]))


def test_frames_without_a_scan_shape_are_refused(tmp_path, scan):
    tifffile.imwrite(tmp_path / "stack.tif", scan.reshape(-1, 16, 16))
    with pytest.raises(ValueError, match=r"stack\.tif: 12 frames and no scan shape in the file; give it \(--scan-shape"):
        imported(tmp_path / "stack.tif", tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()


def test_corrupt_tiff_is_named(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x07" * 50)
    with pytest.raises(ValueError, match=r"bad\.tif: unreadable TIFF"):
        imported(tmp_path / "bad.tif", tmp_path / "s.h5", scan_shape=(1, 1))
    assert not (tmp_path / "s.h5").exists()


def test_a_2d_image_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "adf.tif", np.ones((64, 48), np.float32))
    with pytest.raises(ValueError, match=r"adf\.tif: a 2-D 64x48 image, not a 4D-STEM scan"):
        read_acquisition(tmp_path / "adf.tif")


def write_mib(path, frames):
    """Merlin frames: a 384-byte ASCII header then big-endian uint16 pixels, frame after frame."""
    with open(path, "wb") as f:
        for i, frame in enumerate(frames, start=1):
            fields = ["MQ1", f"{i:06d}", "00384", "01", f"{frame.shape[1]:04d}", f"{frame.shape[0]:04d}", "U16",
                      "   1x1", "01", "2026-11-22T10:00:00.000000000Z", "1000000ns", "0", "0"]
            header = ",".join(fields).encode()
            f.write(header + b"\x00" * (384 - len(header)))
            f.write(frame.astype(">u2").tobytes())


def test_merlin_mib_same_data_set_as_tiff_and_hdf5(tmp_path, scan):
    """One scan exported three ways gives one data set: the .mib holds rows bottom-up (RosettaSciIO
    turns them), the TIFF stack and HDF5 file hold the frames as displayed."""
    shown = scan
    write_mib(tmp_path / "scan.mib", shown[..., ::-1, :].reshape(-1, 16, 16))
    tifffile.imwrite(tmp_path / "scan.tif", shown.reshape(-1, 16, 16))
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["frames"] = shown
    from_mib, _ = imported(tmp_path / "scan.mib", tmp_path / "m.h5", scan_shape=(3, 4), label="LU")
    assert np.array_equal(from_mib, imported(tmp_path / "scan.tif", tmp_path / "t.h5", scan_shape=(3, 4))[0])
    assert np.array_equal(from_mib, imported(tmp_path / "scan.h5", tmp_path / "h.h5")[0])
    assert np.array_equal(from_mib, displayed(shown))
    # streamed as `polarmap map` reads them: blocks of several scan rows, a stack's frames included
    for name in ("scan.mib", "scan.tif", "scan.h5"):
        frames = io.ScanFrames(read_acquisition(tmp_path / name), (3, 4))
        assert np.array_equal(frames[0:3], from_mib) and np.array_equal(frames[1:3, 1:, 2:5], from_mib[1:3, 1:, 2:5])
        block = np.empty((2, 4, 16, 16), np.float32)
        frames.read_direct(block, (slice(1, 3),))
        assert np.array_equal(block, from_mib[1:3])


def test_merlin_mib_truncated_mid_frame(tmp_path, scan):
    write_mib(tmp_path / "scan.mib", scan.reshape(-1, 16, 16))
    data = (tmp_path / "scan.mib").read_bytes()
    frame_bytes = 384 + 16 * 16 * 2
    (tmp_path / "cut.mib").write_bytes(data[: 9 * frame_bytes + 100])  # 9 frames and a bit
    with pytest.warns(UserWarning, match="keeping the first 2 full rows"):
        assert imported(tmp_path / "cut.mib", tmp_path / "m.h5", scan_shape=(3, 4))[0].shape == (2, 4, 16, 16)


@pytest.mark.parametrize("layout", ["4d", "3d"])
def test_hdf5_emd(tmp_path, scan, layout):
    with h5py.File(tmp_path / "in.h5", "w") as f:  # py4DSTEM-like nesting, no EMD attributes
        group = f.create_group("4DSTEM_experiment/data/datacubes/datacube_0")
        group["data"] = scan if layout == "4d" else scan.reshape(-1, 16, 16)
    patterns, _ = imported(tmp_path / "in.h5", tmp_path / "h.h5", scan_shape=None if layout == "4d" else (3, 4))
    assert np.array_equal(patterns, displayed(scan))


def test_hdf5_transposed_scan_shape_is_refused(tmp_path, scan):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = scan
    with pytest.raises(ValueError, match=r"in\.h5: the file's scan is 3x4 \(rows x cols\); the scan shape given, 4x3, disagrees \(transposed\)"):
        imported(tmp_path / "in.h5", tmp_path / "h.h5", scan_shape=(4, 3))


def test_hdf5_with_several_stacks_lists_them(tmp_path, scan):
    """A Velox-like file: an image series beside the scan; the reader asks which one."""
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["Data/Image/a/Data"] = np.ones((32, 32, 16), np.float32)
        f["Data/4D/b/Data"] = scan
    with pytest.raises(ValueError, match=r"holds 2 candidate data sets, Data/4D/b/Data \(3x4x16x16\); Data/Image/a/Data \(32x32x16\); choose one with --dataset"):
        read_acquisition(tmp_path / "in.h5")
    assert np.array_equal(imported(tmp_path / "in.h5", tmp_path / "h.h5", dataset="Data/4D/b/Data")[0], displayed(scan))


def test_blockfile_through_rosettasciio_with_its_calibration(tmp_path, scan):
    """A NanoMegas blockfile written by RosettaSciIO's own writer: the scan step comes from the file;
    the detector's scale reads back in cm of the camera, not an angle, so it is left to the user."""
    from rsciio.blockfile import file_writer

    axes = [{"name": n, "size": s, "scale": c, "offset": 0.0, "units": u, "navigate": nav}
            for n, s, c, u, nav in (("y", 3, 0.05, "nm", True), ("x", 4, 0.05, "nm", True),
                                    ("ky", 16, 0.5, "1/nm", False), ("kx", 16, 0.5, "1/nm", False))]
    signal = {"data": scan.astype(np.uint8), "axes": axes, "metadata": {"General": {"title": "scan"}, "Signal": {"signal_type": "electron_diffraction"},
                                                                        "Acquisition_instrument": {"TEM": {"beam_energy": 200.0}}},
              "original_metadata": {}, "attributes": {"_lazy": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(str(tmp_path / "scan.blo"), signal)
    acquisition = read_acquisition(tmp_path / "scan.blo")
    assert acquisition.frames.shape == (3, 4, 16, 16) and acquisition.scan_shape_from == "file"
    assert acquisition.calibration["scan_step_angstrom"] == pytest.approx(0.5)
    assert acquisition.calibration["detector_mrad_per_px"] is None
    assert np.array_equal(imported(tmp_path / "scan.blo", tmp_path / "b.h5")[0], displayed(scan.astype(np.uint8).astype(np.float32)))


def test_a_blockfile_cut_short_is_refused_before_anything_is_allocated(tmp_path, scan):
    """The header of a copy cut short still declares the whole scan: refused by its size."""
    from rsciio.blockfile import file_writer

    axes = [{"name": n, "size": s, "scale": c, "offset": 0.0, "units": u, "navigate": nav}
            for n, s, c, u, nav in (("y", 3, 0.05, "nm", True), ("x", 4, 0.05, "nm", True),
                                    ("ky", 16, 0.5, "1/nm", False), ("kx", 16, 0.5, "1/nm", False))]
    signal = {"data": scan.astype(np.uint8), "axes": axes, "metadata": {"General": {"title": "scan"}, "Signal": {},
                                                                        "Acquisition_instrument": {"TEM": {"beam_energy": 200.0}}},
              "original_metadata": {}, "attributes": {"_lazy": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(str(tmp_path / "scan.blo"), signal)
    (tmp_path / "cut.blo").write_bytes((tmp_path / "scan.blo").read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.blo: its header declares a 3x4 scan of 16x16 px frames .* truncated or damaged"):
        read_acquisition(tmp_path / "cut.blo")


def write_ser(path, frames):
    """A TIA series of images in the .ser layout: header, one dimension (the series), the offsets
    of the elements and of their tags, then each element (calibration, float32 data) and its tag."""
    import struct

    count, rows, cols = frames.shape
    dimension = struct.pack("<IddII", count, 0.0, 1.0, 0, 0) + struct.pack("<I", 0)  # size, offset, delta, element, no text
    offsets_at = 30 + len(dimension)
    element_header = 50
    element_size = element_header + rows * cols * 4 + 8  # calibration, data, time tag
    first = offsets_at + 8 * count
    data_offsets = [first + i * element_size for i in range(count)]
    tag_offsets = [offset + element_size - 8 for offset in data_offsets]
    with open(path, "wb") as f:
        f.write(struct.pack("<HHHIIIIII", 0x4949, 0x0197, 0x0210, 0x4122, 0x4152, count, count, offsets_at, 1))
        f.write(dimension)
        f.write(struct.pack(f"<{2 * count}I", *data_offsets, *tag_offsets))
        for frame in frames:
            f.write(struct.pack("<ddIddIHII", 0.0, 1.0, 0, 0.0, 1.0, 0, 7, cols, rows))  # 7: float32, then the sizes along x and y
            f.write(np.ascontiguousarray(frame[::-1], dtype="<f4").tobytes())  # x fastest, the bottom row first
            f.write(struct.pack("<HHI", 0x4152, 0, 0))


def write_mrc(path, frames):
    """An MRC stack (mode 2, float32) with the standard 1024-byte header, as RosettaSciIO reads it."""
    from rsciio.mrc._api import get_std_dtype_list

    header = np.zeros(1, dtype=get_std_dtype_list("<"))
    header["NZ"], header["NY"], header["NX"] = frames.shape
    header["MODE"], header["MAPC"], header["MAPR"], header["MAPS"] = 2, 1, 2, 3
    header["CMAP"], header["STAMP"] = b"MAP ", b"DA\x00\x00"
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(frames, dtype="<f4").tobytes())


@pytest.mark.parametrize("suffix, write", [(".ser", write_ser), (".mrc", write_mrc)])
def test_a_stack_of_frames_with_a_scan_shape_is_a_scan(tmp_path, scan, suffix, write):
    """TIA and MRC stacks hold frames without saying they are diffraction: with the scan shape
    given they import as the same data set as a TIFF stack of the same frames; without it, the
    refusal asks for it."""
    frames = scan.reshape(-1, 16, 16)
    write(tmp_path / f"scan{suffix}", frames)
    tifffile.imwrite(tmp_path / "scan.tif", frames)
    from_file, _ = imported(tmp_path / f"scan{suffix}", tmp_path / "a.h5", scan_shape=(3, 4), stack_is_scan=True)
    assert np.array_equal(from_file, imported(tmp_path / "scan.tif", tmp_path / "b.h5", scan_shape=(3, 4))[0])
    result = run_import(tmp_path / f"scan{suffix}", "--out", tmp_path / "c.h5")
    assert result.returncode == 2 and "give --scan-shape ROWS COLS if a stack is the scan's frames" in result.stderr, result.stderr
    result = run_import(tmp_path / f"scan{suffix}", "--out", tmp_path / "c.h5", "--scan-shape", 3, 4)
    assert result.returncode == 0, result.stderr


def as_zspy(hspy, zspy):
    """The same hierarchy in zarr (format 2, as HyperSpy writes .zspy): RosettaSciIO 0.15's zspy
    writer needs zarr 2's stores, and abTEM needs zarr 3."""
    import zarr

    def plain(value):
        return value.decode() if isinstance(value, bytes) else value.item() if isinstance(value, np.generic) else value

    def copy(source, target):
        target.attrs.update({key: plain(value) for key, value in source.attrs.items()})
        for name, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(name))
            else:
                target.create_array(name, data=item[()], chunks=item.shape).attrs.update({k: plain(v) for k, v in item.attrs.items()})

    root = zarr.open_group(zspy, mode="w", zarr_format=2)
    with h5py.File(hspy) as f:
        copy(f, root)
    root.attrs["file_format"] = "ZSpy"


@pytest.mark.parametrize("suffix", [".hspy", ".zspy"])
def test_hyperspy_and_pyxem_files(tmp_path, scan, suffix):
    """What HyperSpy and pyxem users save (.hspy, and .zspy: the same hierarchy in zarr), written
    by RosettaSciIO's own writer: the scan shape, step and detector sampling from the file, the
    frames as in an HDF5 export."""
    from rsciio.hspy import file_writer

    axes = [{"name": n, "size": s, "scale": c, "offset": 0.0, "units": u, "navigate": nav}
            for n, s, c, u, nav in (("y", 3, 0.05, "nm", True), ("x", 4, 0.05, "nm", True),
                                    ("ky", 16, 1.5, "mrad", False), ("kx", 16, 1.5, "mrad", False))]
    signal = {"data": scan, "axes": axes, "metadata": {"General": {"title": "scan"}, "Signal": {"signal_type": "electron_diffraction"}},
              "original_metadata": {}, "attributes": {"_lazy": False}, "tmp_parameters": {}, "package_info": {"name": "polarmap", "version": "0"},
              "learning_results": {}, "models": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_writer(str(tmp_path / "scan.hspy"), signal)
    if suffix == ".zspy":
        as_zspy(tmp_path / "scan.hspy", tmp_path / "scan.zspy")
    acquisition = read_acquisition(tmp_path / f"scan{suffix}")
    assert acquisition.scan_shape_from == "file" and acquisition.calibration["scan_step_angstrom"] == pytest.approx(0.5)
    assert acquisition.calibration["detector_mrad_per_px"] == pytest.approx(1.5)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["frames"] = scan
    assert np.array_equal(imported(tmp_path / f"scan{suffix}", tmp_path / "a.h5")[0], imported(tmp_path / "scan.h5", tmp_path / "b.h5")[0])


def write_app5(path, scan, step_m, mrad_per_px):
    """A NanoMegas Topspin .app5 as RosettaSciIO reads it: the experiment's metadata, and a scan
    group (named by a GUID) of one group per position, each a frame and its XML metadata (its
    reciprocal calibration, its position in metres), in row-major order."""
    rows, cols = scan.shape[:2]
    axis = f"<A><O>0</O><S>{mrad_per_px}</S><U><N>unit</N><V>mrad</V></U></A>"
    with h5py.File(path, "w") as f:
        f["Metadata"] = b"<Metadata><Id>scan</Id><Title>scan</Title></Metadata>"
        group = f.create_group("12345678-abcd-abcd-abcd-123456789abc")
        for index in range(rows * cols):
            row, col = divmod(index, cols)
            frame = group.create_group(str(index))
            frame["Data"] = scan[row, col].astype(np.float32)
            frame["Metadata"] = (f"<Frame><K>{axis}{axis}</K><Position><P><N>probe</N><XY><X>{col * step_m}</X><Y>{row * step_m}</Y>"
                                 "</XY></P></Position></Frame>").encode()


def test_topspin_app5(tmp_path, scan):
    """NanoMegas .app5: the scan shape, step and detector sampling from the file, the frames as
    in an HDF5 export."""
    write_app5(tmp_path / "scan.app5", scan, 5e-11, 1.5)
    acquisition = read_acquisition(tmp_path / "scan.app5")
    assert acquisition.frames.shape == (3, 4, 16, 16) and acquisition.scan_shape_from == "file"
    assert acquisition.calibration["scan_step_angstrom"] == pytest.approx(0.5)
    assert acquisition.calibration["detector_mrad_per_px"] == pytest.approx(1.5)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["frames"] = scan
    assert np.array_equal(imported(tmp_path / "scan.app5", tmp_path / "a.h5")[0], imported(tmp_path / "scan.h5", tmp_path / "b.h5")[0])


def test_experimental_declaration_with_unknown_class(tmp_path):
    (tmp_path / "c.yaml").write_text("datasets:\n  experimental:\n    5E: {path: x.mib, format: mib, accepted: [RM, UP]}\n")
    with pytest.raises(ValueError, match=r"c\.yaml: invalid value for 'datasets.experimental.5E.accepted.1'"):
        load_config(tmp_path / "c.yaml")


def run_import(*arguments):
    return subprocess.run([sys.executable, "-m", "polarmap.cli", "import", *map(str, arguments)], capture_output=True, text=True)


def test_import_command_by_hand(tmp_path, scan):
    from test_io import write_tiff_folder

    write_tiff_folder(tmp_path / "qstem_out", scan)
    result = run_import(tmp_path / "qstem_out", "--out", tmp_path / "q.h5", "--scan-shape", 3, 4, "--label", "MU", "--source", "QSTEM 2.5")
    assert result.returncode == 0, result.stderr
    with io.open_dataset(tmp_path / "q.h5") as f:
        meta = io.read_attrs(f)
        assert np.array_equal(f["patterns"][()], displayed(scan)) and (f["labels"][()] == 2).all()
    assert meta["classes"] == ["MU"] and meta["source"] == "QSTEM 2.5" and np.isnan(meta["detector_mrad_per_px"])
    assert meta["calibration_sources"]["energy_kev"] == "unknown" and np.isnan(meta["energy_kev"])  # no silent 200 keV
    result = run_import(tmp_path / "nowhere", "--out", tmp_path / "x.h5")
    assert result.returncode == 2 and "nowhere: no such file or folder" in result.stderr


# ---- the real detector files -----------------------------------------------------------------

@pytest.fixture(scope="module")
def merlin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("merlin")
    for name in ("Merlin_navigation4x2_ROI.zip", "Merlin_Single_Quad.zip"):
        with zipfile.ZipFile(REALDATA / name) as archive:
            archive.extractall(folder)
    return folder


def rsciio_array(module, path, **options):
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(importlib.import_module(f"rsciio.{module}").file_reader(str(path), **options)[0]["data"])


@needs_realdata
def test_real_merlin_scan_shape_from_metadata_and_same_array(merlin, tmp_path):
    """A real 4x2 Merlin scan: 2 rows of 4 from the .hdr and the frames' time stamps, the
    array RosettaSciIO reads, turned +row up; a transposed scan shape is refused."""
    for name, shape in (("001_4x2_6bit.mib", (2, 4, 256, 256)), ("002_4x2_6bit_roi128.mib", (2, 4, 128, 256))):
        reference = rsciio_array("quantumdetector", merlin / name)
        assert reference.shape == shape
        patterns, _ = imported(merlin / name, tmp_path / f"{name}.h5")
        assert np.array_equal(patterns, displayed(reference.astype(np.float32)))
    result = run_import(merlin / "001_4x2_6bit.mib", "--out", tmp_path / "t.h5", "--scan-shape", 4, 2)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "the file's scan is 2x4 (rows x cols); the scan shape given, 4x2, disagrees (transposed)" in result.stderr
    result = run_import(merlin / "001_4x2_6bit.mib", "--out", tmp_path / "t.h5", "--scan-shape", 3, 3)
    assert result.returncode == 2 and "disagrees" in result.stderr and not (tmp_path / "t.h5").exists()


@needs_realdata
def test_real_merlin_refusals(merlin, tmp_path):
    """One line and no output for a RAW-mode file and a single frame; 9 test-image frames
    without line timing need a scan shape."""
    cases = {
        "Single_1_Frame_CounterDepth_1_Rows_256RAW.mib": "RAW MIB data not supported",
        "Quad_1_Frame_CounterDepth_6_Rows_256.mib": "a 2-D 512x512 image, not a 4D-STEM scan",
        "Single_9_Frame_CounterDepth_6_Rows_256.mib": "9 frames and no scan shape in the file",
    }
    for name, message in cases.items():
        result = run_import(merlin / name, "--out", tmp_path / "x.h5")
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not (tmp_path / "x.h5").exists()
    quad = read_acquisition(merlin / "Quad_9_Frame_CounterDepth_24_Rows_256.mib")
    assert quad.frames.shape == (3, 3, 512, 512) and quad.scan_shape_from == "file"


@needs_realdata
def test_real_arina_metadata_mask_and_all_zero_refusal(tmp_path):
    """DECTRIS Arina (bitshuffle): 4x4 scan, step and high tension from the STEM metadata file,
    the pixel mask from the master file, the array RosettaSciIO reads; all its frames are zero,
    so the import refuses in one line."""
    master = REALDATA / "arina" / "test_00_master.h5"
    acquisition = read_acquisition(master)
    assert acquisition.frames.shape == (4, 4, 192, 192) and acquisition.scan_shape_from == "file"
    assert acquisition.calibration["scan_step_angstrom"] == pytest.approx(1.3915206)
    assert acquisition.calibration["energy_kev"] == pytest.approx(300.0)
    assert acquisition.bad_pixels.shape == (192, 192)
    assert np.array_equal(np.asarray(acquisition.frames), rsciio_array("arina", master, navigation_shape=(4, 4)))
    result = run_import(master, "--out", tmp_path / "a.h5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "all 16 frames are zero: not usable diffraction" in result.stderr and not (tmp_path / "a.h5").exists()


@needs_realdata
def test_real_py4dstem_and_prismatic_emd(tmp_path):
    """py4DSTEM EMD 1.0: the 2x3 scan and its step; the calibration in 1/A needs the energy, which
    the file lacks. A Prismatic EMD with two data cubes lists them; the one chosen has the file's
    energy, semi-angle and angular sampling."""
    py4dstem = REALDATA / "py4DSTEM_size2x3x4x5.h5"
    acquisition = read_acquisition(py4dstem)
    assert acquisition.frames.shape == (2, 3, 4, 5) and acquisition.calibration["scan_step_angstrom"] == pytest.approx(1.26796875)
    assert acquisition.calibration["detector_mrad_per_px"] is None and acquisition.calibration["energy_kev"] is None
    assert np.array_equal(imported(py4dstem, tmp_path / "p.h5")[0], displayed(rsciio_array("emd", py4dstem)))
    prismatic = REALDATA / "Si100_4D.emd"
    result = run_import(prismatic, "--out", tmp_path / "s.h5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "holds 2 4D-STEM data sets, 0.0: CBED_array CBED_array_depth 0 (11x11x8x8); 0.1:" in result.stderr
    result = run_import(prismatic, "--out", tmp_path / "s.h5", "--dataset", "0.1")
    assert result.returncode == 0, result.stderr
    with io.open_dataset(tmp_path / "s.h5") as f:
        meta = io.read_attrs(f)
        assert np.array_equal(f["patterns"][()], displayed(rsciio_array("emd", prismatic)[1]))
    assert (meta["energy_kev"], meta["semiangle_mrad"], meta["scan_step_angstrom"]) == (100.0, 30.0, 5.0)
    assert meta["detector_mrad_per_px"] == pytest.approx(0.18416205 * 0.1 * 0.0370144 * 1e3, rel=1e-4)  # 1/nm x lambda(100 kV)
    assert meta["calibration_sources"] == dict.fromkeys(("energy_kev", "semiangle_mrad", "detector_mrad_per_px", "scan_step_angstrom"), "file")
