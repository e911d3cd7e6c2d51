"""Readers of 4D-STEM acquisitions: the frames, lazily, and what the file's own metadata says.

Readers only read. Every format RosettaSciIO reads goes through RosettaSciIO (lazily: a dask
array, so a 20 GB scan is never loaded whole); DECTRIS Arina files, which RosettaSciIO reads only
whole, are opened lazily with h5py (and hdf5plugin's bitshuffle filter) and compared with
RosettaSciIO in the tests; TIFF folders and stacks with tifffile.

The array is as RosettaSciIO gives it: scan row 0 is the first line scanned and detector row 0
the camera image's top row, both as the microscope displays them. `polarmap.io` turns that into
the data set convention (+row up) the same way for every reader.

A calibration the file does not hold is None here, never a guess: the caller asks for it.
"""

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polarmap.quantities import wavelength_angstrom

# the file suffixes of each reader; any other folder is a TIFF folder
FORMATS = {
    "mib": (".mib",),
    "hdf5": (".h5", ".hdf5", ".emd", ".nxs"),
    "empad": (".xml",),
    "blockfile": (".blo",),
    "tia": (".emi", ".ser"),
    "mrc": (".mrc",),
    "dm": (".dm3", ".dm4"),
    "topspin": (".app5",),
    "hspy": (".hspy",),
    "zspy": (".zspy",),
    "tiff_stack": (".tif", ".tiff"),
}
CALIBRATIONS = ("scan_step_angstrom", "detector_mrad_per_px", "energy_kev", "semiangle_mrad")
# frames looked at for an all-zero acquisition before anything is written
ZERO_CHECK_FRAMES = 64


@dataclass(frozen=True)
class Acquisition:
    path: str
    frames: object  # lazy (scan_rows, scan_cols, det_rows, det_cols), or (frames, det_rows, det_cols) without a scan shape
    scan_shape_from: str  # "file" or "" (frames only: the caller gives the scan shape)
    calibration: dict = field(default_factory=dict)  # CALIBRATIONS -> float, or None where the file does not say
    bad_pixels: np.ndarray | None = None  # True where the detector's own mask marks a pixel bad


def detect_format(path) -> str:
    path = Path(path)
    for name, suffixes in FORMATS.items():
        if path.suffix.lower() in suffixes:
            return name
    if path.is_dir():  # a .zspy is a folder too, known by its suffix
        return "tiff_folder"
    known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
    raise ValueError(f"{path}: unknown 4D-STEM file type {path.suffix!r}; polarmap reads {known} and folders of TIFFs")


def read_acquisition(path, file_format: str = "auto", dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
    """The frames and metadata of one acquisition; `dataset` picks one of several in a file.
    `stack_is_scan`: a scan shape is given, so a 3-D stack of images is taken for the scan's
    frames even where the file does not call them diffraction."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    file_format = detect_format(path) if file_format == "auto" else file_format
    if file_format not in READERS:
        raise ValueError(f"{path}: unknown format {file_format!r}; use auto or one of {', '.join(READERS)}")
    acquisition = READERS[file_format](path, dataset, stack_is_scan)
    shape = acquisition.frames.shape
    if len(shape) < 3:
        raise ValueError(f"{path}: a {len(shape)}-D {'x'.join(map(str, shape))} image, not a 4D-STEM scan (one diffraction pattern per probe position)")
    kind = np.dtype(acquisition.frames.dtype).kind
    if kind not in "fiub":
        raise ValueError(f"{path}: its frames are {np.dtype(acquisition.frames.dtype)}, not real intensities (complex: a wave, not counts); "
                         "export the detector's counts")
    return acquisition


def _rsciio(module: str, path: Path, **options) -> list[dict]:
    import importlib

    reader = importlib.import_module(f"rsciio.{module}").file_reader
    # RosettaSciIO's notes on metadata it skips (warnings and log lines): the refusals say what matters
    rsciio_log = logging.getLogger("rsciio")
    level = rsciio_log.level
    rsciio_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reader(str(path), lazy=True, **options)
    except NotImplementedError as err:
        raise ValueError(f"{path}: {err} (RosettaSciIO); record or export it in a supported mode") from None
    except Exception as err:  # a damaged file fails in many ways inside a reader (struct, zip, tag and size errors)
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{path}: not a readable {module} file ({type(err).__name__}: {reason}); check the file is whole "
                         "(copied completely) and of that format") from None
    finally:
        rsciio_log.setLevel(level)


_LENGTH_ANGSTROM = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "pm": 0.01, "µm": 1e4, "um": 1e4}
_RECIPROCAL_PER_ANGSTROM = {"1/a": 1.0, "1/å": 1.0, "a^-1": 1.0, "å^-1": 1.0, "1/nm": 0.1, "nm^-1": 0.1}


def _unit(units) -> str:
    units = units.decode() if isinstance(units, bytes) else str(units or "")
    return units.replace(" ", "").lower()


def _length_angstrom(scale, units):
    factor = _LENGTH_ANGSTROM.get(_unit(units))
    return None if factor is None or not scale else float(scale) * factor


def _detector_mrad(scale, units, energy_kev):
    unit = _unit(units)
    if unit in ("mrad", "mrads"):  # Topspin writes mrads
        return float(scale)
    if unit == "rad":
        return float(scale) * 1e3
    if unit in _RECIPROCAL_PER_ANGSTROM and energy_kev:
        return float(scale) * _RECIPROCAL_PER_ANGSTROM[unit] * wavelength_angstrom(float(energy_kev)) * 1e3
    return None


def _from_signal(signal: dict, path: Path, frames, energy_kev=None, semiangle_mrad=None) -> Acquisition:
    """An Acquisition from one RosettaSciIO signal dictionary."""
    axes = signal["axes"]
    instrument = signal.get("metadata", {}).get("Acquisition_instrument", {}).get("TEM", {})
    energy_kev = instrument.get("beam_energy", energy_kev)
    semiangle_mrad = instrument.get("convergence_angle", semiangle_mrad)
    scan_axis, detector_axis = axes[-3] if len(axes) >= 4 else None, axes[-1]
    calibration = {
        "scan_step_angstrom": _length_angstrom(scan_axis.get("scale"), scan_axis.get("units")) if scan_axis else None,
        "detector_mrad_per_px": _detector_mrad(detector_axis.get("scale"), detector_axis.get("units"), energy_kev),
        "energy_kev": float(energy_kev) if energy_kev else None,
        "semiangle_mrad": float(semiangle_mrad) if semiangle_mrad else None,
    }
    return Acquisition(str(path), frames, "file" if frames.ndim == 4 else "", calibration)


def _single(signals: list[dict], path: Path, dataset: str, stack_is_scan: bool) -> tuple[dict, object]:
    """The one 4D-STEM signal of a file (a 5-D one is a stack of scans), or the one `dataset` names."""
    choices = []
    for number, signal in enumerate(signals):
        data = signal["data"]
        title = signal.get("metadata", {}).get("General", {}).get("title", "")
        if data.ndim == 5:
            for depth in range(data.shape[0]):
                choices.append((f"{number}.{depth}", f"{title} {signal['axes'][0].get('name', '')} {depth}", signal, data[depth]))
        elif _is_frames(signal, stack_is_scan):
            choices.append((str(number), title, signal, data))
    if not choices:
        shapes = ", ".join("x".join(map(str, s["data"].shape)) for s in signals)
        stacks = any(s["data"].ndim == 3 for s in signals)
        fix = "give --scan-shape ROWS COLS if a stack is the scan's frames" if stacks else "export the scan's diffraction frames"
        raise ValueError(f"{path}: no 4D-STEM data set in the file (it holds {shapes or 'nothing'}: images or spectra); {fix}")
    if dataset:
        for key, _, signal, data in choices:
            if key == dataset:
                return signal, data
        raise ValueError(f"{path}: no data set {dataset!r}; it holds {_listing(choices)}")
    if len(choices) > 1:
        raise ValueError(f"{path}: holds {len(choices)} 4D-STEM data sets, {_listing(choices)}; choose one with --dataset KEY")
    return choices[0][2], choices[0][3]


def _listing(choices) -> str:
    return "; ".join(f"{key}: {title.strip() or 'untitled'} ({'x'.join(map(str, data.shape))})" for key, title, _, data in choices)


def _is_frames(signal: dict, stack_is_scan: bool) -> bool:
    """A 4-D signal, or a 3-D stack of diffraction frames (or of any frames, a scan shape given);
    not a spectrum image (its last axis is energy, not a detector row)."""
    data = signal["data"]
    metadata = signal.get("metadata", {})
    kind = str(metadata.get("Signal", {}).get("signal_type", "")).lower()
    if kind in ("eds_tem", "eds_sem", "eels", "eds"):
        return False
    return data.ndim == 4 or (data.ndim == 3 and ("diffraction" in kind or stack_is_scan))


def read_mib(path: Path, dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
    """Merlin .mib (single chip or quad) with its .hdr: RosettaSciIO finds the scan's line length
    from the frames' time stamps; RAW-mode files are refused."""
    from rsciio.quantumdetector import load_mib_data

    signal = _rsciio("quantumdetector", path)[0]
    lazy = signal["data"]
    # the same frames from RosettaSciIO's memory map of the file, not its dask array over that map:
    # a block of scan rows reads 10x faster (2.4 against 0.2 GB/s, benchmarks/realdata_speed.md);
    # flipped as the file reader does, and as many whole frames as it kept (an interrupted
    # acquisition: its full rows)
    mapped = load_mib_data(str(path), lazy=True, return_mmap=True)[: int(np.prod(lazy.shape[:-2]))]
    return _from_signal(signal, path, np.flip(mapped.reshape(lazy.shape), axis=-2))


def read_hdf5(path: Path, dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
    """DECTRIS Arina NeXus master files; EMD (Velox, NCEM/Prismatic, py4DSTEM) through RosettaSciIO;
    any other HDF5 file: its 3-D or 4-D dataset, or the one `dataset` names."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            arina = "entry/data" in f and "entry/instrument/detector" in f
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
    if arina:
        return read_arina(path, dataset)
    try:
        # images only: a Velox file's EDS spectrum image is not needed, and not loaded
        signals = _rsciio("emd", path, select_type="images")
    except ValueError:
        return _read_plain_hdf5(path, dataset)
    signal, data = _single(signals, path, dataset, stack_is_scan)
    prismatic = signal.get("original_metadata", {}).get("simulation_parameters", {})
    return _from_signal(signal, path, data, prismatic.get("E0"), prismatic.get("probeSemiangle"))


def _read_plain_hdf5(path: Path, dataset: str) -> Acquisition:
    import h5py

    f = h5py.File(path, "r")  # left open: the dataset is read lazily, row by row
    stacks = []
    f.visititems(lambda name, obj: stacks.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) else None)
    if dataset:
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise ValueError(f"{path}: no dataset {dataset!r}; it holds {', '.join(stacks) or 'no 3-D or 4-D dataset'}")
        name = dataset
    elif len(stacks) == 1:
        name = stacks[0]
    elif not stacks:
        raise ValueError(f"{path}: no 3-D or 4-D dataset (it holds no diffraction frames)")
    else:
        listing = "; ".join(f"{name} ({'x'.join(map(str, f[name].shape))})" for name in stacks)
        raise ValueError(f"{path}: holds {len(stacks)} candidate data sets, {listing}; choose one with --dataset PATH")
    data = f[name]
    return Acquisition(str(path), data, "file" if data.ndim == 4 else "", dict.fromkeys(CALIBRATIONS))


def read_arina(path: Path, dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
    """A DECTRIS Arina NeXus master file and its bitshuffle-compressed data files, lazily (a
    concatenation of the data files' frames); the scan shape, step and high tension from the
    STEM metadata file beside it (`<name>.h5` for `<name>_master.h5`), the pixel mask and
    geometry from the master file."""
    import dask.array
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter with h5py)

    master = h5py.File(path, "r")
    data = master["entry/data"]
    frames = dask.array.concatenate([dask.array.from_array(data[name], chunks=(1, *data[name].shape[1:])) for name in sorted(data)])
    detector = master["entry/instrument/detector"]
    mask = detector.get("detectorSpecific/pixel_mask")
    calibration = dict.fromkeys(CALIBRATIONS)
    metadata_path = Path(str(path).replace("_master.h5", ".h5"))
    camera_length = None
    if metadata_path != path and metadata_path.exists():
        with h5py.File(metadata_path, "r") as meta:
            stem = dict(meta["STEM Metadata"].attrs) if "STEM Metadata" in meta else {}
        if "NumPixelsX" in stem and "NumPixelsY" in stem:
            rows, cols = int(np.ravel(stem["NumPixelsY"])[0]), int(np.ravel(stem["NumPixelsX"])[0])
            if rows * cols == frames.shape[0]:
                frames = frames.reshape(rows, cols, *frames.shape[1:])
        if "Pixel Size" in stem:
            calibration["scan_step_angstrom"] = float(np.ravel(stem["Pixel Size"])[0]) * 10  # nm
        if "High Tension" in stem:
            calibration["energy_kev"] = float(np.ravel(stem["High Tension"])[0]) / 1e3
        camera_length = float(np.ravel(stem.get("Camera Length", [0]))[0]) or None  # m, nominal
    distance = float(detector["detector_distance"][()]) if "detector_distance" in detector else 0.0
    distance = distance or camera_length
    if distance and "x_pixel_size" in detector:
        calibration["detector_mrad_per_px"] = float(detector["x_pixel_size"][()]) / distance * 1e3
    bad = None if mask is None else np.asarray(mask[()]) != 0
    return Acquisition(str(path), frames, "file" if frames.ndim == 4 else "", calibration, bad)


def _rsciio_reader(module: str, check=None, **options):
    """A reader through RosettaSciIO's `module` (with its `options`); `check(path)` first where a
    damaged file would make RosettaSciIO allocate what its header declares."""
    def read(path: Path, dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
        if check:
            check(path)
        signal, data = _single(_rsciio(module, path, **options), path, dataset, stack_is_scan)
        return _from_signal(signal, path, data)

    read.__doc__ = f"A file RosettaSciIO's {module} plugin reads."
    return read


def _check_blockfile_size(path: Path) -> None:
    """A NanoMegas blockfile's header declares its scan and frame size; a damaged header can
    declare terabytes. The file must hold what it declares (frames of 6 header bytes and
    DP_SZ^2 bytes each, after the second offset) before anything is read."""
    from rsciio.blockfile._api import get_header_dtype_list

    header_type = np.dtype(get_header_dtype_list("<"))
    size = path.stat().st_size
    header = np.fromfile(path, dtype=header_type, count=1) if size >= header_type.itemsize else None
    if header is None or len(header) == 0:
        raise ValueError(f"{path}: {size} bytes, shorter than a blockfile header ({header_type.itemsize} bytes): truncated or not a blockfile")
    rows, cols, side, offset = (int(header[key][0]) for key in ("NY", "NX", "DP_SZ", "Data_offset_2"))
    declared = offset + rows * cols * (6 + side * side)
    if not rows or not cols or not side or declared > size:
        raise ValueError(f"{path}: its header declares a {rows}x{cols} scan of {side}x{side} px frames ({declared:,} bytes), "
                         f"the file holds {size:,} bytes: truncated or damaged; copy it again from the microscope")


def read_tiff_stack(path: Path, dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
    """A multi-page TIFF (one frame per page, in scan order) or one 3-D/4-D page."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape, dtype = tif.series[0].shape, tif.series[0].dtype
    except Exception as err:  # tifffile raises several types for damaged or foreign files
        raise ValueError(f"{path}: unreadable TIFF ({type(err).__name__}: {' '.join(str(err).split())[:200]}); re-export it") from None
    try:
        frames = tifffile.memmap(path, mode="r") if len(shape) > 2 else None
    except ValueError:  # compressed pages cannot be memory-mapped: read page by page
        frames = _TiffPages(path, shape, dtype)
    if frames is None:
        raise ValueError(f"{path}: a 2-D {'x'.join(map(str, shape))} image, not a 4D-STEM scan (one diffraction pattern per probe position)")
    return Acquisition(str(path), frames, "file" if frames.ndim == 4 else "", dict.fromkeys(CALIBRATIONS))


class _TiffPages:
    """The pages of a TIFF stack as a lazy (frames, rows, cols) array: indexing reads pages."""

    def __init__(self, path: Path, shape, dtype):
        self.path, self.shape, self.ndim, self.dtype = path, (int(np.prod(shape[:-2])), *shape[-2:]), 3, dtype

    def __getitem__(self, index):
        import tifffile

        start, stop, _ = index.indices(self.shape[0]) if isinstance(index, slice) else (index, index + 1, 1)
        try:
            pages = tifffile.imread(self.path, key=range(start, stop)).reshape(stop - start, *self.shape[1:])
        except Exception as err:
            raise ValueError(f"{self.path}: pages {start}-{stop - 1} unreadable ({err}); the file is damaged") from None
        return pages if isinstance(index, slice) else pages[0]


def read_tiff_folder(folder: Path, dataset: str = "", stack_is_scan: bool = False) -> Acquisition:
    """A folder of one-frame TIFFs (QSTEM output, detector exports), the frame's row-major scan
    index as the last number in each file name (0- or 1-based)."""
    import re

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise ValueError(f"{folder}: no .tif/.tiff files found; point at the folder of one-pattern TIFFs")
    by_index = {}
    for p in files:
        match = re.search(r"(\d+)(?!.*\d)", p.stem)
        if match is None:
            raise ValueError(f"{p}: no scan index in the file name; expected a zero-padded number such as pattern_00042.tif")
        by_index[int(match.group(1))] = p
    first = min(by_index)
    missing = [i for i in range(first, first + len(by_index)) if i not in by_index]
    if missing:
        raise ValueError(f"{folder}: missing TIFF for scan index {missing[0]} ({len(missing)} missing); restore it")
    return Acquisition(str(folder), _TiffFiles([by_index[first + i] for i in range(len(by_index))]), "", dict.fromkeys(CALIBRATIONS))


class _TiffFiles:
    """One-frame TIFF files as a lazy (frames, rows, cols) array."""

    def __init__(self, files):
        self.files = files
        first = self._read(files[0])
        self.shape, self.ndim, self.dtype = (len(files), *first.shape), 3, first.dtype

    def _read(self, path, shape=None):
        import tifffile

        try:
            image = tifffile.imread(path)
        except Exception as err:  # tifffile raises several types for damaged files
            raise ValueError(f"{path}: unreadable TIFF ({err}); re-export it") from None
        if shape is not None and image.shape != tuple(shape):
            raise ValueError(f"{path}: pattern shape {image.shape} differs from the first pattern's {tuple(shape)}")
        return image

    def __getitem__(self, index):
        if isinstance(index, slice):
            return np.stack([self._read(p, self.shape[1:]) for p in self.files[index]])
        return self._read(self.files[index], self.shape[1:])


READERS = {
    "mib": read_mib,
    "hdf5": read_hdf5,
    "empad": _rsciio_reader("empad"),
    "blockfile": _rsciio_reader("blockfile", _check_blockfile_size),
    "tia": _rsciio_reader("tia"),
    "mrc": _rsciio_reader("mrc"),
    "dm": _rsciio_reader("digitalmicrograph"),
    "topspin": _rsciio_reader("topspin"),
    "hspy": _rsciio_reader("hspy"),
    "zspy": _rsciio_reader("zspy", mode="r"),  # read-only: RosettaSciIO opens lazy files for writing
    "tiff_stack": read_tiff_stack,
    "tiff_folder": read_tiff_folder,
}
