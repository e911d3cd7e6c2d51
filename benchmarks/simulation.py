"""Simulation cost: PRISM against plain multislice on the paper's 2x2x50 training cell
(256x256 patterns, 200 keV, 24 mrad), and the default study's simulation stage.

    python benchmarks/simulation.py [--rows N] [--default-study results/default] [--device gpu --name simulation_gpu]

Each engine runs in its own process so that its peak memory is its own. Writes
benchmarks/<name>.md (the table quoted in the README) and benchmarks/<name>.json.
"""

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_engine(method: str, scan_rows: int, out: Path, device: str, rows_per_block: int) -> dict:
    """Child process: simulate the first `scan_rows` rows of a 128x128 scan of train_RU."""
    from polarmap.simulation import SimulationSettings, simulate
    from polarmap.structures import build_supercell

    settings = SimulationSettings(method=method, gpts_per_cell=128, scan_px=128, rows_per_block=rows_per_block, device=device)
    atoms = build_supercell((2, 2, 50), "RU")
    start = time.perf_counter()
    if scan_rows == settings.scan_px:
        simulate(atoms, out, "train_RU", settings, ("RU",), progress=False)
    else:  # a partial scan: the same rows through the same code path
        from polarmap.simulation import _Simulator, geometry

        import h5py
        import numpy as np

        geo = geometry(atoms, settings)
        step = geo.extent[0] / settings.scan_px
        simulator = _Simulator(atoms, geo, settings)
        blocks = [simulator.rows(r, min(r + rows_per_block, scan_rows), (step, step)) for r in range(0, scan_rows, rows_per_block)]
        with h5py.File(out, "w") as f:
            f["patterns"] = np.concatenate(blocks)
    seconds = time.perf_counter() - start
    return {
        "method": method, "patterns": scan_rows * 128, "seconds": seconds,
        "patterns_per_s": scan_rows * 128 / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def measure(method: str, scan_rows: int, out: Path, device: str, rows_per_block: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", method, "--rows", str(scan_rows), "--out", str(out), "--device", device, "--rows-per-block", str(rows_per_block)],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def gpu_name() -> str:
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


def default_study(folder: Path) -> dict | None:
    rows = []
    for tsv in sorted((folder / "benchmarks/simulate").glob("*.tsv")):
        with open(tsv) as f:
            record = next(csv.DictReader(f, delimiter="\t"))
        rows.append({"dataset": tsv.stem, "seconds": float(record["s"]), "max_rss_mb": float(record["max_rss"])})
    if not rows:
        return None
    return {"jobs": rows, "cpu_seconds": sum(r["seconds"] for r in rows), "max_rss_mb": max(r["max_rss_mb"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="scan rows for multislice (of 128)")
    parser.add_argument("--default-study", type=Path, default=Path("results/default"))
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--rows-per-block", type=int, default=8, help="scan rows simulated at once (simulation.rows_per_block)")
    parser.add_argument("--name", default="simulation", help="output files benchmarks/<name>.md and .json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_engine(args.child, args.rows, args.out, args.device, args.rows_per_block)))
        return

    import h5py
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prism = measure("prism", 128, tmp / "prism.h5", args.device, args.rows_per_block)
        multislice = measure("multislice", args.rows, tmp / "multislice.h5", args.device, args.rows_per_block)
        with h5py.File(tmp / "prism.h5") as p, h5py.File(tmp / "multislice.h5") as m:
            a = p["patterns"][: args.rows].astype(np.float64)
            b = m["patterns"][()].astype(np.float64)
        max_rel_diff = float(np.abs(a - b).max() / np.abs(b).max())
    study = default_study(args.default_study)
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, abTEM on {args.device}" + (f" ({gpu_name()})" if args.device == "gpu" else "")
        + f", {args.rows_per_block} scan rows per block",
        "prism_full_class": prism, "multislice_rows": multislice,
        "speedup": prism["patterns_per_s"] / multislice["patterns_per_s"],
        "max_relative_difference": max_rel_diff,
        # on 2 cores two single-threaded jobs run at once; one GPU runs one job at a time
        "paper_training_8_classes_estimate_min": 8 * prism["seconds"] / (2 if args.device == "cpu" else 1) / 60,
        "default_study": study,
    }
    (HERE / f"{args.name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        f"Simulation benchmark ({figures['machine']}; 2x2x50 KNN cell, 20 nm, 256x256 patterns, 200 keV, 24 mrad).",
        "",
        "| engine | patterns | wall time | patterns/s | peak memory |",
        "|---|---|---|---|---|",
        f"| PRISM (interpolation 1), one class, 128x128 scan | {prism['patterns']} | {prism['seconds']:.1f} s | {prism['patterns_per_s']:.0f} | {prism['peak_rss_gb']:.2f} GB |",
        f"| plain multislice, first {args.rows} scan rows | {multislice['patterns']} | {multislice['seconds']:.1f} s | {multislice['patterns_per_s']:.1f} | {multislice['peak_rss_gb']:.2f} GB |",
        "",
        f"PRISM is {figures['speedup']:.0f}x faster; max relative difference on the shared rows: {max_rel_diff:.1e}.",
        f"The 8 paper-scale training classes, "
        + ("two single-threaded jobs at a time on 2 cores" if args.device == "cpu" else "one job at a time on the GPU")
        + f": about {figures['paper_training_8_classes_estimate_min']:.1f} min.",
    ]
    if study:
        lines += [
            "",
            f"Default study (`config.yaml`), simulation stage: {len(study['jobs'])} jobs, "
            f"{study['cpu_seconds']:.0f} s of job time in all, largest job {max(j['seconds'] for j in study['jobs']):.0f} s, "
            f"peak memory of one job {study['max_rss_mb']:.0f} MB.",
        ]
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
