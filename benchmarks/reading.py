"""Reading and preprocessing a paper-scale detector file, and what resampling and sub-pixel
centring cost (issue 15).

    python benchmarks/reading.py [--name reading] [--scan 128]

1. A Merlin .mib with its .hdr, as the detector writes it: a 128x128 scan of 256x256 frames
   (uint16, 2.1 GB) at 1.0 mrad/px: a 24 mrad disc with structure inside, 20 px off the
   detector's centre, a descan plane of 1.5 px across the scan, three hot pixels, Poisson counts
   (about 20 000 electrons per frame).
2. `polarmap import` on it (RosettaSciIO's reader, lazily, row by row), in its own process: time,
   frames per second, peak memory.
3. `polarmap preprocess` of the imported set at the study's sampling (3.148 mrad/px, a 32 px crop,
   orientation given): bad pixels, disc origins, descan plane, cubic resampling; time, peak memory,
   and whether it found the plane and the hot pixels.
4. Per pattern, on 256 frames: the disc's levels-weighted centre, the masked-CoM origin, the cubic
   resampling onto the crop, beside the integer crop it replaces.
Writes benchmarks/<name>.md and benchmarks/<name>.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DETECTOR, MRAD_PER_PX, SEMIANGLE, OFFSET, DESCAN = 256, 1.0, 24.0, (20.0, -12.0), 1.5
HOT_PIXELS = ((150, 110), (40, 200), (140, 118))
STUDY_MRAD_PER_PX, CROP_PX = 3.147897918850153, 32
HEADER_BYTES = 384


def frame_row(row: int, scan: int, rng) -> np.ndarray:
    """One scan row of frames as displayed (row 0 on top), in counts."""
    rows, cols = np.indices((DETECTOR, DETECTOR), dtype=np.float64)
    frames = np.empty((scan, DETECTOR, DETECTOR), np.uint16)
    for col in range(scan):
        centre = np.array([DETECTOR / 2, DETECTOR / 2]) + OFFSET + DESCAN * np.array([row, col]) / (scan - 1)
        r = np.hypot(rows - centre[0], cols - centre[1])
        tilt = 0.3 * np.cos(2 * np.pi * (row + col) / 8)  # structure inside the disc, varying with position
        intensity = (r <= SEMIANGLE / MRAD_PER_PX) * (1 + tilt * (cols - centre[1]) / (SEMIANGLE / MRAD_PER_PX)) + 0.002
        counts = rng.poisson(intensity / intensity.sum() * 20000)
        for hot in HOT_PIXELS:
            counts[hot] = 4000
        frames[col] = np.minimum(counts, 4095)
    return frames


def write_mib(path: Path, rows, shape) -> None:
    """Frames as a Merlin writes them (384-byte header, big-endian 12-bit counts in uint16, rows
    bottom-up as RosettaSciIO expects), and the .hdr whose frames per trigger give the scan's
    lines. `rows` yields the scan's rows of frames as displayed, `shape` is (scan rows, cols)."""
    with open(path, "wb") as f:
        for row, frames in enumerate(rows):
            for col, frame in enumerate(frames):
                index = row * shape[1] + col + 1
                fields = ["MQ1", f"{index:06d}", f"{HEADER_BYTES:05d}", "01", f"{frame.shape[1]:04d}", f"{frame.shape[0]:04d}", "U16", "   1x1",
                          "01", "2026-11-29T10:00:00.000000000Z", "1000000ns", "0", "0"]
                header = ",".join(fields).encode()
                f.write(header + b"\x00" * (HEADER_BYTES - len(header)))
                f.write(np.asarray(frame)[::-1].astype(">u2").tobytes())
    path.with_suffix(".hdr").write_text(
        "HDR,\t\nAssembly Size (NX1, 2X2):\t   1x1\nCounter Depth (number):\t12\n"
        f"Frames in Acquisition (Number):\t{shape[0] * shape[1]}\nFrames per Trigger (Number):\t{shape[1]}\nEnd\t\n")


def timed(command: list[str]) -> dict:
    """Wall time and peak memory of a command in its own process."""
    wrapper = ("import resource, runpy, sys, time; sys.argv = sys.argv[1:]; start = time.perf_counter()\n"
               "try:\n    runpy.run_module('polarmap.cli', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
               "print('TIMED', time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", wrapper, "polarmap", *command], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = [text for text in result.stderr.splitlines() if text.startswith("TIMED")]
    if not line:
        raise RuntimeError(result.stderr[-2000:])
    _, seconds, peak_kb = line[-1].split()
    return {"seconds": round(float(seconds), 2), "peak_gb": round(int(peak_kb) / 1e6, 3)}


def per_pattern_costs() -> dict:
    from polarmap import disc
    from polarmap.orientation import detector_from_scan

    frames = np.concatenate([frame_row(row, 16, np.random.default_rng(row)) for row in range(16)]).astype(np.float32)[:, ::-1]
    found = disc.find_disc(frames.mean(axis=0))
    costs = {}

    def cost(name, function, repeats=3):
        best = min(_seconds(function) for _ in range(repeats))
        costs[name] = round(best / len(frames) * 1e6, 1)  # microseconds per pattern
        return function()

    centres = cost("disc centre (levels-weighted)", lambda: disc.disc_centres(frames, found)[0])
    origins = cost("origin (masked CoM)", lambda: disc.masked_centres(frames, centres, disc.ORIGIN_MASK_RADII * found.radius))
    matrix = detector_from_scan(0.0, False)
    scale = STUDY_MRAD_PER_PX / MRAD_PER_PX
    cost("cubic resampling onto the 32 px crop", lambda: disc.resample(frames, origins, scale, matrix, CROP_PX))
    start = np.rint(origins.mean(axis=0)).astype(int) - CROP_PX // 2
    cost("integer crop (before)", lambda: frames[:, start[0]:start[0] + CROP_PX, start[1]:start[1] + CROP_PX].copy())
    return costs


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="reading")
    parser.add_argument("--scan", type=int, default=128)
    args = parser.parse_args()
    from polarmap import io

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        folder = Path(folder)
        mib = folder / "scan.mib"
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        write_mib(mib, (frame_row(row, args.scan, rng) for row in range(args.scan)), (args.scan, args.scan))
        written = time.perf_counter() - started
        frames = args.scan * args.scan
        imported = timed(["import", str(mib), "--out", str(folder / "raw.h5"), "--mrad-per-px", str(MRAD_PER_PX), "--semiangle-mrad", str(SEMIANGLE)])
        preprocessed = timed(["preprocess", "--source", str(folder / "raw.h5"), "--out", str(folder / "pre.h5"), "--crop-px", str(CROP_PX),
                              "--to-mrad-per-px", str(STUDY_MRAD_PER_PX), "--rotation-deg", "0", "--no-flip"])
        with io.open_dataset(folder / "pre.h5") as f:
            meta = io.read_attrs(f)
        plane = np.array(meta["descan_plane_px"])
        results = {
            "scan": args.scan, "detector_px": DETECTOR, "file_gb": round(mib.stat().st_size / 1e9, 3), "write_seconds": round(written, 1),
            "import": {**imported, "frames_per_s": round(frames / imported["seconds"])},
            "preprocess": {**preprocessed, "frames_per_s": round(frames / preprocessed["seconds"]), "bad_pixels_found": meta["bad_pixel_count"],
                           # the data set's +row up turns scan and detector rows alike: the slopes keep their signs
                           "descan_px_across_scan": [round(float(plane[1, 0] * (args.scan - 1)), 3), round(float(plane[2, 1] * (args.scan - 1)), 3)],
                           "disc_radius_mrad": round(float(meta["disc_radius_px"]) * MRAD_PER_PX, 2)},
            "per_pattern_us": per_pattern_costs(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        }
    (HERE / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Reading and preprocessing a paper-scale detector file ({args.scan}x{args.scan} scan, {DETECTOR}x{DETECTOR} px)",
        "",
        f"`python benchmarks/reading.py` on {results['machine']['cpus']} CPU cores, one thread per process. The Merlin file: "
        f"{results['file_gb']} GB.",
        "",
        "| stage | time (s) | frames/s | peak memory (GB) |",
        "|---|---|---|---|",
        f"| `polarmap import` (RosettaSciIO, lazily) | {imported['seconds']} | {results['import']['frames_per_s']} | {imported['peak_gb']} |",
        f"| `polarmap preprocess` at 3.148 mrad/px, 32 px crop | {preprocessed['seconds']} | {results['preprocess']['frames_per_s']} | "
        f"{preprocessed['peak_gb']} |",
        "",
        f"Found: {results['preprocess']['bad_pixels_found']} bad pixels (3 hot ones planted), a descan of "
        f"{results['preprocess']['descan_px_across_scan']} px across the scan (1.5 planted along each axis), "
        f"a disc of {results['preprocess']['disc_radius_mrad']} mrad (24 planted).",
        "",
        "Per pattern (256 frames of 256x256 px, microseconds):",
        "",
        "| step | us per pattern |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in results["per_pattern_us"].items()],
        "",
    ]
    (HERE / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
