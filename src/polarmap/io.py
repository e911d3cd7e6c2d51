"""The HDF5 data set format (one file per data set) and readers that produce it.

Schema (format "polarmap-4dstem", version 1), documented in the README:
  /patterns  float32 (scan_rows, scan_cols, det_rows, det_cols), one chunk per pattern
  /labels    int8    (scan_rows, scan_cols), class index, -1 = unknown
  /defect_mask bool  (scan_rows, scan_cols), optional: positions near a simulated vacancy
  root attributes: REQUIRED_ATTRS below, plus provenance (config hash, code version).
Detector rows/cols and scan rows/cols share one orientation: +col is "right" (x), +row is
"up" (y); class angles are 45 k degrees counter-clockwise from +col.
"""

import errno
import json
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import tifffile
from tqdm import tqdm

from polarmap.atomic import temporary_path, write_text_atomically
from polarmap.classes import CLASS_NAMES, UNKNOWN_LABEL, class_index
from polarmap.pattern import center_of_mass, intensity_problem

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
    tmp.replace(path)


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


_INDEX = re.compile(r"(\d+)(?!.*\d)")


def import_frames(read_rows, n_frames: int, detector_shape, out, attrs, scan_shape, label=None, source="", compression=None) -> None:
    """Write frames in row-major scan order into a data set. `read_rows(start, stop)` returns
    frames [start, stop) as (n, det_rows, det_cols). An acquisition that stopped early (fewer
    frames than the scan) is kept up to its last full row, with a warning."""
    rows, cols = scan_shape
    if n_frames < rows * cols:
        full_rows = n_frames // cols
        if full_rows == 0:
            raise ValueError(f"{source}: {n_frames} frames do not fill one scan row of {cols}; check the scan shape")
        warnings.warn(f"{source}: {n_frames} frames for a {rows}x{cols} scan (acquisition stopped early?); keeping the first {full_rows} full rows")
        rows = full_rows
    elif n_frames > rows * cols:
        raise ValueError(f"{source}: {n_frames} frames for a {rows}x{cols} scan; give the right scan shape")
    labels = np.full((1, cols), UNKNOWN_LABEL if label is None else class_index(label), dtype=np.int8)
    with create_dataset_file(out, (rows, cols), detector_shape, attrs, compression) as f:
        for row in tqdm(range(rows), desc=f"import {Path(str(source)).name}", unit="row"):
            frames = np.asarray(read_rows(row * cols, (row + 1) * cols), dtype=np.float32)
            if frames.shape != (cols, *detector_shape):
                raise ValueError(f"{source}: scan row {row} has frames of shape {frames.shape[1:]}, expected {tuple(detector_shape)}")
            write_rows(f, row, frames[None], labels, source=str(source))


def import_tiff_folder(folder, out, attrs, scan_shape=None, label=None, compression=None) -> None:
    """A folder of one-pattern TIFFs (QSTEM output or detector exports), the pattern's row-major
    scan index as the last zero-padded number in each file name, into one data set."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder}: no .tif/.tiff files found; point at the folder of one-pattern TIFFs")
    by_index = {}
    for p in files:
        match = _INDEX.search(p.stem)
        if match is None:
            raise ValueError(f"{p}: no scan index in the file name; expected a zero-padded number such as pattern_00042.tif")
        by_index[int(match.group(1))] = p
    first = min(by_index)  # 0- or 1-based numbering both occur
    rows, cols = scan_shape or _square_scan(len(by_index), folder)
    present = len(by_index)
    missing = [i for i in range(first, first + min(present, rows * cols)) if i not in by_index]
    if missing:
        raise ValueError(f"{folder}: missing TIFF for scan index {missing[0]} ({len(missing)} missing); restore it or give the right scan shape")
    detector_shape = _read_tiff(by_index[first]).shape

    def read_rows(start, stop):
        return np.stack([_read_tiff(by_index[first + i], detector_shape) for i in range(start, stop)])

    import_frames(read_rows, present, detector_shape, out, attrs, (rows, cols), label, str(folder), compression)


def import_tiff_stack(path, out, attrs, scan_shape=None, label=None, compression=None) -> None:
    """A multi-page TIFF, one pattern per page in row-major scan order (or one 3-D/4-D page)."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            n_pages = len(tif.pages)
            series_shape = tif.series[0].shape
    except Exception as err:  # tifffile raises several types for damaged files
        raise ValueError(f"{path}: unreadable TIFF ({err}); re-export it") from None
    if n_pages == 1 and len(series_shape) in (3, 4):  # one page holding the whole stack
        stack = tifffile.imread(path).reshape(-1, *series_shape[-2:])
        n_frames, detector_shape = stack.shape[0], stack.shape[1:]
        scan_shape = scan_shape or (tuple(series_shape[:2]) if len(series_shape) == 4 else _square_scan(n_frames, path))

        def read_rows(start, stop):
            return stack[start:stop]
    else:
        n_frames, detector_shape = n_pages, tuple(series_shape[-2:])
        scan_shape = scan_shape or _square_scan(n_frames, path)

        def read_rows(start, stop):
            try:
                return tifffile.imread(path, key=range(start, stop)).reshape(stop - start, *detector_shape)
            except Exception as err:
                raise ValueError(f"{path}: pages {start}-{stop - 1} unreadable ({err}); the file is damaged") from None

    import_frames(read_rows, n_frames, detector_shape, out, attrs, scan_shape, label, str(path), compression)


def import_mib(path, out, attrs, scan_shape=None, label=None, compression=None) -> None:
    """A Quantum Detectors Merlin .mib file, read with RosettaSciIO. Frames are flipped along the
    detector rows as RosettaSciIO's (and hyperspy's) reader does, so patterns match what users
    of those tools see."""
    from rsciio.quantumdetector import load_mib_data

    path = Path(path)
    try:
        frames = load_mib_data(str(path), mmap_mode="r")
    except Exception as err:  # RosettaSciIO raises several types for damaged files
        raise ValueError(f"{path}: not a readable Merlin .mib file ({err})") from None
    frames = frames.reshape(-1, *frames.shape[-2:])
    scan_shape = scan_shape or _square_scan(frames.shape[0], path)

    def read_rows(start, stop):
        return np.flip(np.asarray(frames[start:stop], dtype=np.float32), axis=-2)

    import_frames(read_rows, frames.shape[0], tuple(frames.shape[-2:]), out, attrs, scan_shape, label, str(path), compression)


def import_hdf5(path, out, attrs, scan_shape=None, label=None, dataset_path="", compression=None) -> None:
    """An HDF5/EMD file (py4DSTEM, other software): a 4-D (scan_rows, scan_cols, det_rows, det_cols)
    or 3-D (frames, det_rows, det_cols) dataset at `dataset_path`, or the first such one found."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        name = dataset_path or _first_stack(f)
        if name is None or name not in f or not isinstance(f[name], h5py.Dataset) or f[name].ndim not in (3, 4):
            raise ValueError(f"{path}: no 3-D or 4-D pattern dataset{f' at {name!r}' if dataset_path else ''}; give its path")
        data = f[name]
        if data.ndim == 4:
            scan_shape = scan_shape or tuple(data.shape[:2])
            n_frames = data.shape[0] * data.shape[1]

            if tuple(scan_shape) != data.shape[:2]:
                raise ValueError(f"{path}: scan shape {tuple(scan_shape)} does not match the file's {data.shape[:2]}")

            def read_rows(start, stop):  # import_frames asks for whole scan rows
                return data[start // data.shape[1]]
        else:
            n_frames = data.shape[0]
            scan_shape = scan_shape or _square_scan(n_frames, path)

            def read_rows(start, stop):
                return data[start:stop]

        import_frames(read_rows, n_frames, tuple(data.shape[-2:]), out, attrs, scan_shape, label, str(path), compression)


def _first_stack(f: h5py.File):
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) and not found:
            found.append(name)

    f.visititems(visit)
    return found[0] if found else None


READERS = {"tiff_folder": import_tiff_folder, "tiff_stack": import_tiff_stack, "mib": import_mib, "hdf5": import_hdf5}


def _square_scan(count: int, source) -> tuple[int, int]:
    side = int(round(np.sqrt(count)))
    if side * side != count:
        raise ValueError(f"{source}: {count} patterns are not a square scan; give the scan shape (e.g. --scan-shape 128 128)")
    return side, side


def _read_tiff(path: Path, detector_shape=None) -> np.ndarray:
    try:
        image = tifffile.imread(path)
    except Exception as err:  # tifffile raises several types for damaged files
        raise ValueError(f"{path}: unreadable TIFF ({err}); re-export it") from None
    if detector_shape is not None and image.shape != tuple(detector_shape):
        raise ValueError(f"{path}: pattern shape {image.shape} differs from the first pattern's {tuple(detector_shape)}")
    return image


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
