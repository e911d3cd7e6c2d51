"""Preprocessing throughput on a paper-scale data set (128x128 patterns of 256x256, 4.3 GB):
CoM + crop + min-max as `polarmap preprocess` runs it (HDF5 in and out), the same maths on
patterns already in memory, and a plain numpy copy of the same bytes (the bandwidth limit).

    python benchmarks/preprocessing.py [--input results/paper/datasets/train_RU.h5]

Without --input a synthetic set of shifted discs is written first. The preprocessing runs in
its own process so that its peak memory is its own. Writes benchmarks/preprocessing.md/.json.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synthetic_set(path: Path, scan=128, size=256) -> None:
    from polarmap import io
    from polarmap.classes import CLASS_NAMES

    rows, cols = np.mgrid[:size, :size]
    attrs = dict(name="bench", classes=["RM"], class_names=list(CLASS_NAMES), thickness_nm=20.0, supercell="2x2x50",
                 energy_kev=200.0, semiangle_mrad=24.0, detector_mrad_per_px=3.15, scan_step_angstrom=0.06, source="synthetic")
    rng = np.random.default_rng(0)
    with io.create_dataset_file(path, (scan, scan), (size, size), attrs) as f:
        for r in range(scan):
            shifts = rng.normal(0, 0.5, size=(scan, 2))
            block = np.stack([((rows - 128 - dr) ** 2 + (cols - 128 - dc) ** 2 < 7.6**2) for dr, dc in shifts]).astype(np.float32)
            io.write_rows(f, r, block[None] + 1e-3, np.zeros((1, scan), np.int8))


def child(source: Path, out: Path) -> dict:
    from polarmap.preprocessing import PreprocessSettings, preprocess_dataset

    start = time.perf_counter()
    preprocess_dataset(source, out, PreprocessSettings(crop_px=64), is_training=True, progress=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def in_memory(block: np.ndarray) -> float:
    """Seconds for CoM + crop + min-max of one block held in memory."""
    from polarmap.pattern import center_of_mass, min_max

    start = time.perf_counter()
    com = center_of_mass(block)
    crop = block[..., 96:160, 96:160]
    min_max(crop)
    _ = com.mean()
    return time.perf_counter() - start


def _timed(func, *args) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    with tempfile.TemporaryDirectory(dir=HERE.parent / "results" if (HERE.parent / "results").exists() else None) as tmp:
        tmp = Path(tmp)
        source = args.input
        if source is None:
            source = tmp / "synthetic.h5"
            synthetic_set(source)
        import h5py

        with h5py.File(source) as f:
            shape = f["patterns"].shape
            block = f["patterns"][:8]  # one block of 8 scan rows, as the preprocessing reads it
        raw_gb = np.prod(shape) * 4 / 1e9
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        result = subprocess.run([sys.executable, __file__, "--child", str(source), str(tmp / "out.h5")],
                                capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    blocks = shape[0] / block.shape[0]
    big = np.ones(2**28, np.float32)  # 1 GB, larger than any cache
    target = np.zeros_like(big)  # touched, so no page faults are timed
    copy_gbs = max(big.nbytes / 1e9 / _timed(np.copyto, target, big) for _ in range(3))
    maths_gbs = block.nbytes / 1e9 / min(in_memory(block) for _ in range(3))
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "input": str(args.input or "synthetic discs"),
        "shape": list(shape), "raw_gb": raw_gb, "blocks": blocks,
        "preprocess_seconds": measured["seconds"], "preprocess_gbs": raw_gb / measured["seconds"],
        "peak_rss_gb": measured["peak_rss_gb"], "in_memory_maths_gbs": maths_gbs, "memory_copy_gbs": copy_gbs,
    }
    (HERE / "preprocessing.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        f"Preprocessing benchmark ({figures['machine']}; {figures['input']}, {shape[0]}x{shape[1]} patterns of "
        f"{shape[2]}x{shape[3]}, {raw_gb:.1f} GB float32).",
        "",
        "| what | throughput of raw patterns |",
        "|---|---|",
        f"| `polarmap preprocess` (two passes over HDF5, writes the crops) | {figures['preprocess_gbs']:.2f} GB/s ({measured['seconds']:.1f} s) |",
        f"| CoM + crop + min-max on patterns in memory | {maths_gbs:.2f} GB/s |",
        f"| numpy copy of the same bytes (bandwidth limit) | {copy_gbs:.2f} GB/s |",
        "",
        f"Peak memory of the preprocessing process: {measured['peak_rss_gb']:.2f} GB.",
    ]
    (HERE / "preprocessing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
