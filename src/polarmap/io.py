"""The HDF5 data set format (one file per data set) and readers that produce it.

Schema (format "polarmap-4dstem", version 1), documented in the README:
  /patterns  float32 (scan_rows, scan_cols, det_rows, det_cols), one chunk per pattern
  /labels    int8    (scan_rows, scan_cols), class index, -1 = unknown
  /defect_mask bool  (scan_rows, scan_cols), optional: positions near a simulated vacancy
  root attributes: REQUIRED_ATTRS below, plus provenance (config hash, code version).
  /bad_pixels  bool (det_rows, det_cols), optional: the detector's own mask of bad pixels
Detector rows/cols and scan rows/cols share one orientation: +col is "right" (x), +row is
"up" (y); class angles are 45 k degrees counter-clockwise from +col. Imported acquisitions are
turned into it from the orientation the microscope displays (`import_acquisition`); how the
detector sits against the scan (rotation, flip) is found in preprocessing.
"""

import errno
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from polarmap.atomic import read_npz, temporary_path, write_text_atomically
from polarmap.classes import CLASS_NAMES, UNKNOWN_LABEL, class_index
from polarmap.pattern import center_of_mass, intensity_problem
from polarmap.provenance import provenance_attrs
from polarmap.quantities import check_quantity, stored_quantity_problem
from polarmap.readers import ZERO_CHECK_FRAMES

FORMAT_NAME = "polarmap-4dstem"
FORMAT_VERSION = 1
CONVENTION = "col=+x right, row=+y up, scan and detector unrotated; theta_k = 45k deg ccw from +col"
REQUIRED_ATTRS = (
    "name", "classes", "class_names", "thickness_nm", "supercell", "energy_kev", "semiangle_mrad",
    "detector_mrad_per_px", "scan_step_angstrom", "source",
)


def _encode(value):
    """Lists and dicts are stored as JSON strings so any HDF5 reader can show them."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value


@contextmanager
def create_dataset_file(path, scan_shape, detector_shape, attrs, compression=None):
    """Open a new data set for writing at a temporary path; it replaces `path` only when the
    block exits cleanly, so a failure never leaves a half-written data set behind."""
    path = Path(path)
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise ValueError(f"{path}: missing data set attributes {missing}")
    for name in attrs["classes"]:
        class_index(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    with writing(tmp, path) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["convention"] = CONVENTION
        for key, value in attrs.items():
            f.attrs[key] = _encode(value)
        # NaN fill: a pattern never written (an interrupted or failed write) reads as NaN,
        # which every check refuses, never as a plausible all-zero pattern
        f.create_dataset(
            "patterns", shape=(*scan_shape, *detector_shape), dtype="float32",
            chunks=(1, 1, *detector_shape), compression=compression, fillvalue=np.nan,
        )
        f.create_dataset("labels", shape=scan_shape, dtype="int8", fillvalue=UNKNOWN_LABEL)
        yield f
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class WriteFailed(OSError):
    """An HDF5 file could not be written (a full disk, a file-size limit). HDF5 cannot close such
    a file cleanly, and its finalisers may crash the process: exit without them."""


@contextmanager
def writing(tmp: Path, path: Path, mode: str = "w", keep_tmp: bool = False):
    """`tmp` open as HDF5 on the way to `path`, closed at the end. Any failure removes `tmp`
    (unless it is resumable work, `keep_tmp`); a failed write becomes one `WriteFailed` line
    naming the file, and the file is then left unclosed (closing it would fail again)."""
    f = None
    try:
        f = h5py.File(tmp, mode)
        yield f
        f.close()
    except BaseException as err:
        failed_write = isinstance(err, (OSError, RuntimeError)) and not isinstance(err, FileNotFoundError) and _is_write_failure(err)
        if f is not None and not failed_write:
            f.close()
        if not keep_tmp:
            tmp.unlink(missing_ok=True)
        if failed_write:
            raise WriteFailed(f"{path}: writing failed ({str(err).splitlines()[0]}); free disk space (or raise the file-size "
                              "limit) and rerun" + ("; finished rows are kept and resumed" if keep_tmp else "")) from None
        raise


def _is_write_failure(err: BaseException) -> bool:
    text = str(err)
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        marker in text for marker in ("write failed", "No space left", "File too large", "unable to extend file", "Disk quota")
    )


def write_rows(f: h5py.File, row_start: int, patterns: np.ndarray, labels: np.ndarray, source: str = "") -> None:
    """Write a block of scan rows, refusing values that would poison training."""
    problem = intensity_problem(patterns, row_start)
    if problem:
        raise ValueError(f"{source or f.filename}: {problem}")
    if labels.min() < UNKNOWN_LABEL or labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{source or f.filename}: labels outside -1..{len(CLASS_NAMES) - 1}")
    rows = slice(row_start, row_start + patterns.shape[0])
    f["patterns"][rows] = patterns
    f["labels"][rows] = labels


def write_dataset(path, patterns, labels, attrs, compression=None) -> None:
    """Write a whole in-memory data set (small sets, importers, tests)."""
    patterns = np.asarray(patterns, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int8)
    if patterns.ndim != 4:
        raise ValueError(f"{path}: patterns must be 4-D (scan_rows, scan_cols, det_rows, det_cols), got shape {patterns.shape}")
    if labels.shape != patterns.shape[:2]:
        raise ValueError(f"{path}: labels shape {labels.shape} does not match the scan shape {patterns.shape[:2]}")
    with create_dataset_file(path, patterns.shape[:2], patterns.shape[2:], attrs, compression) as f:
        write_rows(f, 0, patterns, labels, source=str(path))


def read_attrs(f: h5py.File) -> dict:
    return {key: _decode(value) for key, value in f.attrs.items()}


def stored_attrs(attrs: dict) -> dict:
    """Attributes as a data set file gives them back (`read_attrs`): tuples become lists, numpy
    scalars Python numbers; for a scan streamed without being written."""
    return {key: _decode(_encode(value)) for key, value in attrs.items()}


@contextmanager
def open_dataset(path, check_values: bool = False):
    """Open and validate a data set; every problem is one clear error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data set; run `polarmap simulate` or an importer first")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupt: {err}); regenerate it") from None
    with f:
        validate_open_dataset(f, path, check_values)
        yield f


def validate_open_dataset(f: h5py.File, path: Path, check_values: bool) -> None:
    if f.attrs.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a {FORMAT_NAME} data set (no 'format' attribute); import it with `polarmap import`")
    missing = [key for key in REQUIRED_ATTRS if key not in f.attrs]
    if missing:
        raise ValueError(f"{path}: missing attributes {missing}; regenerate the file")
    if "patterns" not in f or "labels" not in f:
        raise ValueError(f"{path}: needs /patterns and /labels datasets")
    patterns, labels = f["patterns"], f["labels"]
    if patterns.dtype.kind not in "fiu":
        raise ValueError(f"{path}: /patterns are {patterns.dtype}, not real intensities; store float or integer counts")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: /labels are {labels.dtype}; class indices must be integers (-1..{len(CLASS_NAMES) - 1})")
    if patterns.ndim != 4:
        raise ValueError(f"{path}: /patterns must be 4-D (scan_rows, scan_cols, det_rows, det_cols), got shape {patterns.shape}")
    if labels.shape != patterns.shape[:2]:
        raise ValueError(f"{path}: /labels shape {labels.shape} does not match the scan shape {patterns.shape[:2]}")
    for key in (*CALIBRATION_ARGUMENTS, "thickness_nm"):
        problem = stored_quantity_problem(key, _decode(f.attrs[key]))
        if problem:
            raise ValueError(f"{path}: stored {problem}; regenerate or re-import it with the right calibration")
    for name in _decode(f.attrs["classes"]):
        if name not in CLASS_NAMES:
            raise ValueError(f"{path}: unknown class {name!r} in attribute 'classes'; use {', '.join(CLASS_NAMES)}")
    label_values = labels[()]
    if label_values.min() < UNKNOWN_LABEL or label_values.max() >= len(CLASS_NAMES):
        raise ValueError(f"{path}: /labels holds values outside -1..{len(CLASS_NAMES) - 1}")
    if check_values:
        for row in range(patterns.shape[0]):
            try:
                block = patterns[row:row + 1]
            except OSError as err:
                raise ValueError(f"{path}: scan row {row} cannot be read ({err}); the file is truncated, regenerate it") from None
            problem = intensity_problem(block, row)
            if problem:
                raise ValueError(f"{path}: {problem}")


def refuse_preprocessed(attrs: dict, path, stage: str) -> None:
    """Stages that need the detector's own patterns refuse a preprocessed set (cropped, resampled,
    normalised), naming the raw set it came from."""
    if "preprocessing" in attrs:
        raise ValueError(f"{path}: a preprocessed set (cropped and normalised); {stage} needs the raw patterns: "
                         f"give its source, {attrs.get('source_file', 'the raw data set')}")


def info(path, check_values: bool = True) -> str:
    """A human-readable summary of a data set."""
    with open_dataset(path, check_values=check_values) as f:
        attrs = read_attrs(f)
        labels = f["labels"][()]
        shape, dtype = f["patterns"].shape, f["patterns"].dtype
    counts = {CLASS_NAMES[k] if k >= 0 else "unknown": int((labels == k).sum()) for k in np.unique(labels)}
    lines = [f"{path}", f"  patterns: {shape} {dtype} (scan_rows, scan_cols, det_rows, det_cols)", f"  labels: {counts}"]
    lines += [f"  {key}: {attrs[key]}" for key in sorted(attrs) if key not in ("config_json", "package_versions")]
    return "\n".join(lines)


class ScanFrames:
    """An acquisition's frames as a data set holds them, read lazily a block of scan rows at a time:
    float32, with the scan's and the detector's rows reversed so that +row is up for both, as in
    every simulated set (a reader gives them as the microscope displays them, row 0 on top). The
    same for every reader, so a .mib, a TIFF stack and an HDF5 export of one scan give one data set.
    Indexed like a data set's /patterns: [scan rows, scan cols(, detector rows, detector cols)],
    slices with step 1; what `import_acquisition` writes, and what `polarmap map` streams without
    writing it.

    The scan shape is the file's where it has one (a different `scan_shape` is refused); frames
    without one need `scan_shape`. An acquisition that stopped early (fewer frames than the scan
    given) is kept up to its last full row, with a warning. An all-zero acquisition is refused."""

    dtype = np.dtype(np.float32)
    ndim = 4

    @property
    def stored_dtype(self) -> np.dtype:
        """The file's own dtype (the frames are handed out as float32)."""
        return np.dtype(self.frames.dtype)

    def __init__(self, acquisition, scan_shape=None):
        self.frames, self.source = acquisition.frames, acquisition.path
        frames, source = self.frames, self.source
        if frames.ndim == 4:
            file_shape = tuple(int(n) for n in frames.shape[:2])
            if scan_shape and tuple(scan_shape) != file_shape:
                transposed = " (transposed)" if tuple(scan_shape) == file_shape[::-1] else ""
                raise ValueError(f"{source}: the file's scan is {file_shape[0]}x{file_shape[1]} (rows x cols); the scan shape given, "
                                 f"{scan_shape[0]}x{scan_shape[1]}, disagrees{transposed}: leave it out")
            rows, cols = file_shape
        else:
            n_frames = int(frames.shape[0])
            if not scan_shape:
                raise ValueError(f"{source}: {n_frames} frames and no scan shape in the file; give it (--scan-shape ROWS COLS, or scan_shape in the config)")
            rows, cols = (int(n) for n in scan_shape)
            if n_frames > rows * cols:
                raise ValueError(f"{source}: {n_frames} frames for a {rows}x{cols} scan; give the scan shape the acquisition used")
            if n_frames < rows * cols:
                if n_frames < cols:
                    raise ValueError(f"{source}: {n_frames} frames do not fill one scan row of {cols}; check the scan shape")
                warnings.warn(f"{source}: {n_frames} frames for a {rows}x{cols} scan (acquisition stopped early?); keeping the first {n_frames // cols} full rows")
                rows = n_frames // cols
        self.shape = (rows, cols, *(int(n) for n in frames.shape[-2:]))
        self.bad_pixels = None if acquisition.bad_pixels is None else np.asarray(acquisition.bad_pixels, dtype=bool)[::-1].copy()
        self._refuse_all_zero()

    def file_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows start..stop - 1 as the file holds them (row 0 the first scanned, frames as
        displayed), (rows, cols, det_rows, det_cols) in the file's dtype."""
        cols = self.shape[1]
        try:
            block = np.asarray(self.frames[start:stop] if self.frames.ndim == 4 else self.frames[start * cols:stop * cols])
        except ValueError:
            raise
        except Exception as err:  # a lazy reader meets a truncated or damaged file only now
            raise ValueError(f"{self.source}: scan rows {start}-{stop - 1} cannot be read ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:200]}); the file is truncated or damaged: copy it again") from None
        if block.shape[-2:] != self.shape[2:]:
            raise ValueError(f"{self.source}: scan rows {start}-{stop - 1} have frames of shape {block.shape[-2:]}, expected {self.shape[2:]}")
        if block.size != (stop - start) * np.prod(self.shape[1:]):
            raise ValueError(f"{self.source}: scan rows {start}-{stop - 1} hold {block.size // np.prod(self.shape[2:])} frames, "
                             f"expected {(stop - start) * cols}; the file is truncated or damaged: copy it again")
        return block.reshape(stop - start, *self.shape[1:])

    def __getitem__(self, selection):
        return self._flipped(selection).astype(self.dtype)

    def read_direct(self, out: np.ndarray, selection) -> None:
        """`self[selection]` converted straight into `out`, as h5py's `read_direct`: one pass over
        the frames (`polarmap.blocks.scan_blocks` reads through it)."""
        np.copyto(out, self._flipped(selection), casting="unsafe")

    def _flipped(self, selection) -> np.ndarray:
        selection = selection if isinstance(selection, tuple) else (selection,)
        rows, cols, *detector = (*selection, *[slice(None)] * (4 - len(selection)))
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("scan rows are read in blocks of consecutive rows (step 1)")
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)[:, cols, detector[0], detector[1]]
        # data set row r is the file's row (rows - 1 - r); detector rows likewise
        return self.file_rows(self.shape[0] - stop, self.shape[0] - start)[::-1, cols, ::-1][:, :, detector[0], detector[1]]

    def _refuse_all_zero(self) -> None:
        """An unexposed (all-zero) acquisition is refused before anything is written."""
        looked = 0
        for row in range(self.shape[0]):
            if self.file_rows(row, row + 1).any():
                return
            looked += self.shape[1]
            if looked >= ZERO_CHECK_FRAMES:
                break
        which = f"all {looked} frames are" if looked == self.shape[0] * self.shape[1] else f"the first {looked} frames are all"
        raise ValueError(f"{self.source}: {which} zero: not usable diffraction (an unexposed or blanked acquisition?)")


def import_acquisition(acquisition, out, attrs, scan_shape=None, label=None, compression=None, progress=True) -> None:
    """Write an acquisition (`polarmap.readers`) into a data set, scan row by scan row, as
    `ScanFrames` gives it."""
    frames = ScanFrames(acquisition, scan_shape)
    rows, cols = frames.shape[:2]
    labels = np.full((1, cols), UNKNOWN_LABEL if label is None else class_index(label), dtype=np.int8)
    with create_dataset_file(out, (rows, cols), frames.shape[2:], attrs, compression) as f:
        if frames.bad_pixels is not None:
            f.create_dataset("bad_pixels", data=frames.bad_pixels)
        for row in tqdm(range(rows), desc=f"import {Path(str(frames.source)).name}", unit="row", disable=not progress):
            write_rows(f, row, frames[row:row + 1], labels, source=str(frames.source))


# each calibration: a value given here (0 = not given) wins over the file's; what neither has is
# stored as NaN (unknown), and the stages that need it ask for it by name
CALIBRATION_ARGUMENTS = {
    "energy_kev": "--energy-kev", "semiangle_mrad": "--semiangle-mrad", "detector_mrad_per_px": "--mrad-per-px",
    "scan_step_angstrom": "--scan-step-angstrom",
}


def acquisition_attrs(job: dict, acquisition) -> dict:
    """A data set's attributes for an acquisition and its import job (the CLI's or the config's
    keys): every calibration with where it came from."""
    calibration, sources = {}, {}
    for key, flag in CALIBRATION_ARGUMENTS.items():
        given, in_file = job.get(key) or None, acquisition.calibration.get(key)
        if given is not None:
            check_quantity(key, given, flag, "give the value in the units named (0: the file's)")
        elif in_file is not None:
            check_quantity(key, in_file, acquisition.path, f"the file's own {key} is wrong: give the right one ({flag})")
        calibration[key] = given or in_file or float("nan")
        sources[key] = "given" if given else "file" if in_file else "unknown"
    if job["thickness_nm"]:  # 0: unknown
        check_quantity("thickness_nm", job["thickness_nm"], "--thickness-nm", "give it in nm (0: unknown)")
    return {
        "name": job["name"], "classes": job["accepted"], "class_names": list(CLASS_NAMES),
        "thickness_nm": job["thickness_nm"] or float("nan"), "supercell": job["supercell"], "source": job["source"],
        **calibration, "calibration_sources": sources, "scan_shape_from": acquisition.scan_shape_from or "given",
        **provenance_attrs({key: job[key] for key in ("path", "format", "dataset", "scan_shape", "label")}),
    }


SUMMARY_COLUMNS = (
    "name", "scan_shape", "pattern_shape", "thickness_nm", "supercell", "classes",
    "detector_mrad_per_px", "scan_step_angstrom", "mean_com_row_px", "mean_com_col_px", "source",
)


def summary_row(path) -> dict:
    """One line describing a data set, including the CoM of its scan-mean pattern."""
    with open_dataset(path) as f:
        attrs = read_attrs(f)
        patterns = f["patterns"]
        mean_pattern = np.zeros(patterns.shape[2:], dtype=np.float64)
        for row in range(patterns.shape[0]):
            mean_pattern += patterns[row].sum(axis=0)
        shape = patterns.shape
    com = center_of_mass(mean_pattern) - np.array(shape[2:]) // 2
    return {
        "name": attrs["name"], "scan_shape": f"{shape[0]}x{shape[1]}", "pattern_shape": f"{shape[2]}x{shape[3]}",
        "thickness_nm": round(float(attrs["thickness_nm"]), 3), "supercell": attrs["supercell"],
        "classes": "/".join(attrs["classes"]) or "-", "detector_mrad_per_px": round(float(attrs["detector_mrad_per_px"]), 4),
        "scan_step_angstrom": round(float(attrs["scan_step_angstrom"]), 4),
        "mean_com_row_px": round(float(com[0]), 4), "mean_com_col_px": round(float(com[1]), 4), "source": attrs["source"],
    }


def write_summary(paths, out) -> None:
    out = Path(out)
    lines = ["\t".join(SUMMARY_COLUMNS)]
    lines += ["\t".join(str(row[c]) for c in SUMMARY_COLUMNS) for row in map(summary_row, paths)]
    write_text_atomically(out, "\n".join(lines) + "\n")


PACBED_LIBRARY_KEYS = ("patterns", "thickness_nm", "mrad_per_px", "energy_kev", "semiangle_mrad")


def read_pacbed_library(path) -> dict:
    """A PACBED thickness library as `polarmap pacbed-library` wrote it, or one line naming the
    file: damaged, foreign, or holding patterns that are no thickness series."""
    fix = "make it again with polarmap pacbed-library"
    library = read_npz(path, "PACBED library", fix)
    missing = [key for key in PACBED_LIBRARY_KEYS if key not in library]
    if missing:
        raise ValueError(f"{path}: not a PACBED library (no {', '.join(missing)}); {fix}")
    patterns, thickness = library["patterns"], library["thickness_nm"]
    if patterns.ndim != 3 or thickness.shape != patterns.shape[:1] or len(thickness) < 2:
        raise ValueError(f"{path}: its patterns are {'x'.join(map(str, patterns.shape))} for {thickness.size} thicknesses, not a series "
                         f"(thickness, rows, cols) of at least 2; {fix}")
    if not (np.isfinite(patterns).all() and (patterns >= 0).all() and np.isfinite(thickness).all() and (np.diff(thickness) > 0).all()):
        raise ValueError(f"{path}: its patterns hold NaN or negative values, or its thicknesses do not increase; {fix}")
    for key in ("mrad_per_px", "energy_kev", "semiangle_mrad"):
        if not (np.isfinite(library[key]) and library[key] > 0):
            raise ValueError(f"{path}: its {key} is {library[key]}, not a positive number; {fix}")
    return {key: (library[key] if library[key].ndim else library[key].item()) for key in library}
