"""A real scan at the speed of the disk: `polarmap map` beside LiberTEM and a plain read of the
same Merlin files, in one run (issue 25).

    python benchmarks/realdata_speed.py [--name realdata_speed] [--scans 128 256] [--libertem-python PY]

1. Merlin files as the detector writes them (`reading.write_mib`): 256x256 frames at 1.0 mrad/px
   of a 24 mrad disc 20 px off centre, a descan plane of 1.5 px across the scan, three hot pixels,
   Poisson counts (20 000 electrons a frame), and in the dark field the columns of a perovskite
   (A sites at the cell corners, Nb at the centre displaced 0.4 scan steps along +x: 20 pm at
   0.5 A a step, 8 steps a cell), so that the per-cell map has a lattice to find and a vector to
   get right. A 128x128 scan (2.15 GB) and a 256x256 one (8.6 GB; left out, with the reason, where
   the disk has less than twice its size free).
2. On each file, each measurement in its own process, first from a cold page cache (the file's
   pages dropped with posix_fadvise) and then warm (the same command again):
   - read: the frames read once through `polarmap.io.ScanFrames` (memory-mapped, flipped,
     converted to float32 block by block), and the bytes alone touched (the disk's ceiling);
   - LiberTEM: its CoMUDF and a ring mask (the virtual ADF) in one pass, in LiberTEM's own
     environment (`--libertem-python`, default: a virtual environment made with it from PyPI
     under benchmarks/out/), its "threads" executor on every core; numba compiled on a one-row
     region first, the cold and warm passes timed inside its process;
   - the virtual images (ADF, BF, ABF) and the CoM field (`scan_virtual_images` of the streamed
     frames, a thread per core as `polarmap map` runs it, timed in its process: what LiberTEM's
     pass computes, and a BF, an ABF and the PACBED besides);
   - `polarmap map` per cell (no model: the virtual images, the lattice, a vector per cell);
   - `polarmap map` per pattern: the same with a stand-in PCA+kNN model trained at the study's
     sampling (3.148 mrad/px, 32 px crop) on a 16x16 corner of the file; its answers are not
     results, its time is. Also, in this process, the time up to the model's input
     (`preprocess_scan` of the streamed frames).
   Wall time, frames/s, GB/s of the file, peak memory (max RSS) and bytes written (wchar).
Writes benchmarks/<name>.md and benchmarks/<name>.json.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reading import write_mib

HERE = Path(__file__).resolve().parent
DETECTOR, MRAD_PER_PX, SEMIANGLE, OFFSET, DESCAN = 256, 1.0, 24.0, (20.0, -12.0), 1.5
HOT_PIXELS = ((150, 110), (40, 200), (140, 118))
STUDY_MRAD_PER_PX, CROP_PX = 3.147897918850153, 32
STEP_ANGSTROM, CELL_STEPS, NB_SHIFT_STEPS, COLUMN_SIGMA_STEPS = 0.5, 8, 0.4, 1.2
ADF_MRAD = (60.0, 150.0)
INNER_TIMES = ("float32_seconds", "touch_seconds", "virtual_seconds", "to_model_input_seconds")  # timed inside a script's process
LIBERTEM = "libertem==0.16.0"
MAP_ARGUMENTS = ["--mrad-per-px", str(MRAD_PER_PX), "--semiangle-mrad", str(SEMIANGLE), "--scan-step-angstrom", str(STEP_ANGSTROM),
                 "--rotation-deg", "0", "--no-flip"]


def column_image(scan: int) -> np.ndarray:
    """The dark-field signal at every probe position (rows as displayed): A columns (half as bright)
    at the cell corners, Nb at the centres shifted NB_SHIFT_STEPS along +x."""
    rows, cols = np.indices((scan, scan), dtype=np.float64)
    image = np.zeros((scan, scan))
    for centre, weight in (((0.0, 0.0), 0.5), ((CELL_STEPS / 2, CELL_STEPS / 2 + NB_SHIFT_STEPS), 1.0)):
        d_row = (rows - centre[0] + CELL_STEPS / 2) % CELL_STEPS - CELL_STEPS / 2
        d_col = (cols - centre[1] + CELL_STEPS / 2) % CELL_STEPS - CELL_STEPS / 2
        image += weight * np.exp(-(d_row**2 + d_col**2) / (2 * COLUMN_SIGMA_STEPS**2))
    return image


def frame_rows(scan: int, seed: int = 0):
    """The scan's rows of frames as displayed (row 0 on top), in counts."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((DETECTOR, DETECTOR), dtype=np.float64)
    columns = column_image(scan)
    for row in range(scan):
        frames = np.empty((scan, DETECTOR, DETECTOR), np.uint16)
        for col in range(scan):
            centre = np.array([DETECTOR / 2, DETECTOR / 2]) + OFFSET + DESCAN * np.array([row, col]) / (scan - 1)
            inside = np.hypot(rows - centre[0], cols - centre[1]) <= SEMIANGLE / MRAD_PER_PX
            intensity = inside + 0.002 * (1 + 4 * columns[row, col])
            counts = rng.poisson(intensity * (20000 / intensity.sum()))
            for hot in HOT_PIXELS:
                counts[hot] = 4000
            frames[col] = np.minimum(counts, 4095)
        yield frames


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache, so that the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measured(command: list[str], python=sys.executable, env=None) -> dict:
    """Wall time, peak memory and bytes written of a Python command in its own process; what the
    command prints last as one line of JSON comes back too. Memory: the peak of what the process
    allocates (anonymous), sampled every 20 ms, and of its resident set, which also counts the
    pages of a memory-mapped file it has read (the page cache's, given back under pressure)."""
    wrapper = ("import runpy, sys, threading, time; sys.argv = sys.argv[1:]; start = time.perf_counter(); code = 0; peak = {}\n"
               "def watch():  # ru_maxrss would be the parent's, kept across exec\n"
               "    while True:\n"
               "        status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
               "        for key in ('RssAnon', 'VmRSS'):\n"
               "            peak[key] = max(peak.get(key, 0), int(status[key].split()[0]))\n"
               "        time.sleep(0.02)\n"
               "threading.Thread(target=watch, daemon=True).start()\n"
               "try:\n    runpy.run_path(sys.argv[0], run_name='__main__') if sys.argv[0].endswith('.py') else "
               "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\nexcept SystemExit as e:\n    code = e.code\n"
               "io = dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())\n"
               "print('MEASURED', time.perf_counter() - start, peak.get('RssAnon', 0), peak.get('VmRSS', 0), io['wchar'], file=sys.stderr)\n"
               "sys.exit(code)")
    result = subprocess.run([python, "-c", wrapper, *command], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=HERE)
    line = [text for text in result.stderr.splitlines() if text.startswith("MEASURED")]
    if result.returncode or not line:
        raise RuntimeError(f"{' '.join(command)}:\n{result.stderr[-3000:]}")
    _, seconds, anonymous_kb, resident_kb, written = line[-1].split()
    try:  # the scripts here print one line of JSON last (a map prints its summary, not wanted here)
        printed = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        printed = {}
    return {"seconds": round(float(seconds), 2), "peak_gb": round(int(anonymous_kb) / 1e6, 3), "peak_resident_gb": round(int(resident_kb) / 1e6, 3),
            "written_mb": round(int(written) / 1e6, 1),
            **(printed if isinstance(printed, dict) else {})}


READ_SCRIPT = """
import json, sys, time
import numpy as np
from polarmap import io
from polarmap.blocks import scan_blocks
from polarmap.readers import read_acquisition
frames = io.ScanFrames(read_acquisition(sys.argv[1]))
start = time.perf_counter()
total = 0.0
for _, block in scan_blocks(frames, 8, dtype=np.float32):
    total += float(block[:, :, 0, 0].sum())
converted = time.perf_counter() - start
print(json.dumps({"float32_seconds": round(converted, 2)}))
"""

TOUCH_SCRIPT = """
import json, sys, time
import numpy as np
start = time.perf_counter()
data = np.memmap(sys.argv[1], dtype=np.uint8, mode="r")
step = 1 << 28
total = sum(int(data[i:i + step][::4096].sum()) for i in range(0, data.size, step))  # every page touched
print(json.dumps({"touch_seconds": round(time.perf_counter() - start, 2)}))
"""

LIBERTEM_SCRIPT = """
import json, os, sys, time
import numpy as np
from libertem.api import Context
from libertem.udf.com import CoMUDF
from libertem.udf.masks import ApplyMasksUDF

path, scan, cy, cx, inner, outer = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:7])
ctx = Context.make_with("threads", cpus=os.cpu_count())
ds = ctx.load("mib", path=path, nav_shape=(scan, scan))
rows, cols = np.indices(tuple(ds.shape.sig))
ring = lambda: ((np.hypot(rows - cy, cols - cx) >= inner) & (np.hypot(rows - cy, cols - cx) < outer)).astype(np.float32)

def udfs():
    return [CoMUDF.with_params(cy=cy, cx=cx), ApplyMasksUDF(mask_factories=[ring])]

roi = np.zeros(tuple(ds.shape.nav), bool)
roi[0] = True
ctx.run_udf(ds, udfs(), roi=roi)  # numba compiles here
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
times = []
for _ in ("cold", "warm"):
    start = time.perf_counter()
    result = ctx.run_udf(ds, udfs())
    times.append(time.perf_counter() - start)
field = result[0]["field"].data
print(json.dumps({"cold_seconds": round(times[0], 2), "warm_seconds": round(times[1], 2), "field_shape": list(np.shape(field))}))
"""

VIRTUAL_SCRIPT = """
import json, os, sys, time
from polarmap import io
from polarmap.imaging import scan_virtual_images
from polarmap.readers import read_acquisition
acquisition = read_acquisition(sys.argv[1])
attrs = {"detector_mrad_per_px": float(sys.argv[2]), "semiangle_mrad": float(sys.argv[3]), "supercell": "experimental", "source": "detector",
         "name": "scan"}
frames = io.ScanFrames(acquisition)
start = time.perf_counter()
scan_virtual_images(frames, attrs, sys.argv[1], workers=len(os.sched_getaffinity(0)))
print(json.dumps({"virtual_seconds": round(time.perf_counter() - start, 2)}))
"""

PREPROCESS_SCRIPT = """
import json, os, sys, time
import numpy as np
from polarmap import io
from polarmap.preprocessing import PreprocessSettings, preprocess_scan
from polarmap.readers import read_acquisition
path, out = sys.argv[1], sys.argv[2]
acquisition = read_acquisition(path)
job = {"name": "scan", "format": "auto", "dataset": "", "scan_shape": None, "label": None, "accepted": [], "thickness_nm": 0.0,
       "supercell": "experimental", "source": "detector", "path": path, "detector_mrad_per_px": float(sys.argv[3]),
       "scan_step_angstrom": float(sys.argv[4]), "semiangle_mrad": float(sys.argv[5]), "energy_kev": 0.0}
attrs = io.stored_attrs(io.acquisition_attrs(job, acquisition))
frames = io.ScanFrames(acquisition)
start = time.perf_counter()
settings = PreprocessSettings(crop_px=int(sys.argv[7]), mrad_per_px=float(sys.argv[6]), rotation_deg=0.0, flip=False)
preprocess_scan(frames, np.full(frames.shape[:2], -1, np.int8), attrs, path, out, settings, False, progress=False,
                bad_pixels=frames.bad_pixels, workers=len(os.sched_getaffinity(0)))
print(json.dumps({"to_model_input_seconds": round(time.perf_counter() - start, 2)}))
"""


def stand_in_model(mib: Path, folder: Path) -> Path:
    """A PCA+kNN model at the study's sampling, trained on a 16x16 corner of the file with the
    class of each pattern's centre of mass for a label: something `polarmap map` can run."""
    from polarmap import io
    from polarmap.augmentation import AugmentationSettings
    from polarmap.classes import angle_to_class
    from polarmap.pattern import center_of_mass
    from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
    from polarmap.readers import read_acquisition
    from polarmap.splits import SplitSettings, make_split
    from polarmap.training import train_pca_knn

    corner = io.ScanFrames(read_acquisition(mib))[-16:, :16]
    shift = center_of_mass(corner) - center_of_mass(corner).mean(axis=(0, 1))
    labels = angle_to_class(np.arctan2(shift[..., 0], shift[..., 1])).astype(np.int8)
    attrs = {"name": "corner", "classes": [], "class_names": [], "thickness_nm": float("nan"), "supercell": "experimental", "source": "detector",
             "energy_kev": float("nan"), "semiangle_mrad": SEMIANGLE, "detector_mrad_per_px": MRAD_PER_PX, "scan_step_angstrom": STEP_ANGSTROM}
    io.write_dataset(folder / "corner.h5", corner, labels, attrs)
    settings = PreprocessSettings(crop_px=CROP_PX, mrad_per_px=STUDY_MRAD_PER_PX, rotation_deg=0.0, flip=False)
    preprocess_dataset(folder / "corner.h5", folder / "corner_pre.h5", settings, True, progress=False)
    make_split([folder / "corner_pre.h5"], folder / "split.npz", "none", 0, SplitSettings(blocked=False),
               SplitSettings(fractions=(0.9, 0.1), blocked=False))
    (folder / "pca_knn-none-seed0").mkdir()
    model = folder / "pca_knn-none-seed0" / "model.npz"
    train_pca_knn(folder / "split.npz", [folder / "corner_pre.h5"], model, "none", 0, "corrected", 20, 5, AugmentationSettings())
    return model


def libertem_python(given: str) -> str:
    """LiberTEM's interpreter: given, or a virtual environment of its own made under benchmarks/out/."""
    if given:
        return given
    venv = HERE / "out" / "libertem-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", LIBERTEM], check=True)
    return str(python)


def _seconds_key(entry: dict) -> str:
    """The time a measurement is judged by: its script's own, else the whole process's."""
    return next((key for key in INNER_TIMES if key in entry), "seconds")


def rates(entry: dict, frames: int, gigabytes: float, seconds_key: str = "seconds") -> dict:
    seconds = max(entry[seconds_key], 0.01)  # a hundredth of a second is what is measured
    return {"frames_per_s": round(frames / seconds), "gb_per_s": round(gigabytes / seconds, 3)}


def measure_file(mib: Path, scan: int, model: Path, folder: Path, libertem: str) -> dict:
    frames, gigabytes = scan * scan, mib.stat().st_size / 1e9
    disc_centre = (DETECTOR / 2 - 1 - OFFSET[0], DETECTOR / 2 + OFFSET[1])  # LiberTEM's frames as stored: rows bottom-up
    runs = {  # a script's text, or a module; then its arguments
        "read (polarmap.io.ScanFrames, float32)": (READ_SCRIPT, str(mib)),
        "touch every page (numpy memmap)": (TOUCH_SCRIPT, str(mib)),
        "virtual images and CoM field (scan_virtual_images)": (VIRTUAL_SCRIPT, str(mib), str(MRAD_PER_PX), str(SEMIANGLE)),
        "map per cell": ("polarmap.cli", "map", str(mib), "--out", str(folder / "cells"), *MAP_ARGUMENTS),
        "map per pattern": ("polarmap.cli", "map", str(mib), "--model", str(model), "--out", str(folder / "patterns"), *MAP_ARGUMENTS),
        "preprocess to the model's input (streamed)": (PREPROCESS_SCRIPT, str(mib), str(folder / "pre.h5"), str(MRAD_PER_PX),
                                                       str(STEP_ANGSTROM), str(SEMIANGLE), str(STUDY_MRAD_PER_PX), str(CROP_PX)),
    }
    results = {"scan": scan, "frames": frames, "file_gb": round(gigabytes, 3)}
    for name, command in runs.items():
        results[name] = {}
        for cache in ("cold", "warm"):
            if cache == "cold":
                evict(mib)
            for leftover in ("cells", "patterns", "pre.h5"):
                target = folder / leftover
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            entry = _run(*command)
            results[name][cache] = {**entry, **rates(entry, frames, gigabytes, _seconds_key(entry))}
        if name == "map per cell":
            results["cells found"] = _cells_found(folder / "cells" / "cells.csv")
    evict(mib)
    entry = _run(LIBERTEM_SCRIPT, str(mib), str(scan), *map(str, disc_centre), *map(str, ADF_MRAD), python=libertem)
    results["LiberTEM CoMUDF + ring, threads"] = {
        "process": {key: entry[key] for key in ("seconds", "peak_gb", "peak_resident_gb", "written_mb")},
        **{cache: {"seconds": entry[f"{cache}_seconds"], **rates(entry, frames, gigabytes, f"{cache}_seconds")} for cache in ("cold", "warm")}}
    return results


def _run(program: str, *arguments: str, python: str = sys.executable) -> dict:
    """`measured` for a module's name, or a script's text (written to a file for the run)."""
    if "\n" not in program:
        return measured([program, *arguments], python)
    script = Path(tempfile.mkstemp(suffix=".py")[1])
    script.write_text(program)
    try:
        return measured([str(script), *arguments], python)
    finally:
        script.unlink()


def _cells_found(path: Path) -> dict:
    import csv

    with open(path) as f:
        cells = list(csv.DictReader(f))
    u = np.array([float(cell["u_pm"]) for cell in cells])
    v = np.array([float(cell["v_pm"]) for cell in cells])
    planted = NB_SHIFT_STEPS * STEP_ANGSTROM * 100
    return {"cells": len(cells), "planted_u_pm": planted, "median_u_pm": round(float(np.median(u)), 2), "median_v_pm": round(float(np.median(v)), 2),
            "median_error_pm": round(float(np.median(np.hypot(u - planted, v))), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="realdata_speed")
    parser.add_argument("--scans", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--libertem-python", default="", help="a Python with LiberTEM installed (default: one made under benchmarks/out/)")
    args = parser.parse_args()
    libertem = libertem_python(args.libertem_python)
    version = subprocess.run([libertem, "-c", "import libertem; print(libertem.__version__)"], capture_output=True, text=True, check=True).stdout.strip()
    results = {"files": [], "left_out": [], "libertem": version,
               "machine": {"cpus": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
                           "python": platform.python_version(), "numpy": np.__version__}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        folder = Path(folder)
        for scan in args.scans:
            size = scan * scan * (DETECTOR * DETECTOR * 2 + 384)
            free = shutil.disk_usage(folder).free
            if free < 2 * size:
                results["left_out"].append(f"{scan}x{scan} scan: {size / 1e9:.1f} GB, and {free / 1e9:.1f} GB free (twice its size needed)")
                continue
            mib = folder / f"scan{scan}.mib"
            started = time.perf_counter()
            write_mib(mib, frame_rows(scan), (scan, scan))
            written = round(time.perf_counter() - started, 1)
            (folder / f"model{scan}").mkdir()
            model = stand_in_model(mib, folder / f"model{scan}")
            entry = measure_file(mib, scan, model, folder, libertem)
            results["files"].append({"write_seconds": written, **entry})
            mib.unlink()
    (HERE / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / f"{args.name}.md").write_text(report(results))
    print(report(results))


def report(results: dict) -> str:
    lines = [
        "# A real scan at the speed of the disk: `polarmap map` beside LiberTEM",
        "",
        f"`python benchmarks/realdata_speed.py` on {results['machine']['cpus']} CPU cores, {results['machine']['memory_gb']} GB of memory; "
        f"LiberTEM {results['libertem']} (its \"threads\" executor, every core). Merlin files of 256x256 frames (uint16); each "
        "measurement its own process, cold (the file's pages dropped first) then warm. LiberTEM's times are its passes inside a "
        "process that has compiled its kernels; polarmap's are whole commands (start-up and outputs included), but for the read, "
        "the page touch, the virtual images and the preprocessing, timed inside their processes. Peak memory is what a process allocates; peak resident "
        "adds the file's pages it has mapped (page cache, given back under pressure).",
        "",
    ]
    for entry in results["files"]:
        lines += [f"## {entry['scan']}x{entry['scan']} scan, {entry['file_gb']} GB ({entry['frames']} frames)", "",
                  "| what | cache | time (s) | frames/s | GB/s | peak memory (GB) | peak resident (GB) | written (MB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, runs in entry.items():
            if not isinstance(runs, dict) or "warm" not in runs:
                continue
            for cache in ("cold", "warm"):
                run = runs[cache]
                seconds = run[_seconds_key(run)]
                process = runs.get("process", run)
                lines.append(f"| {name} | {cache} | {seconds} | {run['frames_per_s']} | {run['gb_per_s']} | {process['peak_gb']} | "
                             f"{process['peak_resident_gb']} | {process['written_mb']} |")
        ours, theirs = entry["virtual images and CoM field (scan_virtual_images)"], entry["LiberTEM CoMUDF + ring, threads"]
        lines += ["", "The virtual images and CoM field at " + ", ".join(
            f"{ours[cache]['gb_per_s'] / theirs[cache]['gb_per_s']:.2f} of LiberTEM's GB/s {cache}" for cache in ("cold", "warm")) + "."]
        cells = entry["cells found"]
        lines += ["", f"The per-cell map found {cells['cells']} cells; median u {cells['median_u_pm']} pm, v {cells['median_v_pm']} pm "
                      f"(planted: {cells['planted_u_pm']:.0f} pm along +x), median error {cells['median_error_pm']} pm.", ""]
    lines += [f"Left out: {reason}." for reason in results["left_out"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
