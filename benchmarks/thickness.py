"""What thickness-diverse training costs in simulation (issue 9): one training class simulated at
several thicknesses, at the default study's scale and at the paper's, with a straight-line fit of
time against thickness; then the added cost of the thickness preset's variants and sweep, at both
scales, for 8 classes.

    python benchmarks/thickness.py [--paper-cells 50 125] [--name thickness]

Each simulation runs in its own single-threaded process, as a Snakemake job does. Writes
benchmarks/<name>.md and benchmarks/<name>.json.
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
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCALES = {  # the default study's and the paper's detector and scan
    "default": {"gpts_per_cell": 64, "scan_px": 32},
    "paper": {"gpts_per_cell": 128, "scan_px": 128},
}


def child(scale: str, cells: int, phonons: int, out: Path) -> dict:
    from polarmap.simulation import SimulationSettings, simulate
    from polarmap.structures import build_supercell

    settings = SimulationSettings(**SCALES[scale], frozen_phonon_configs=phonons, rows_per_block=8)
    atoms = build_supercell((2, 2, cells), "RM")
    start = time.perf_counter()
    simulate(atoms, out, "train_RM", settings, ("RM",), progress=False)
    return {"scale": scale, "cells": cells, "frozen_phonon_configs": phonons, "seconds": time.perf_counter() - start,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def measure(scale: str, cells: int, phonons: int, folder: Path) -> dict:
    out = folder / f"{scale}_{cells}_{phonons}.h5"
    result = subprocess.run(
        [sys.executable, __file__, "--child", scale, str(cells), str(phonons), str(out)],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
    )
    out.unlink()
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def linear_fit(rows: list[dict]) -> tuple[float, float]:
    """seconds = fixed + per_cell * cells, least squares (an exact line through two points)."""
    cells = np.array([r["cells"] for r in rows], float)
    seconds = np.array([r["seconds"] for r in rows])
    per_cell, fixed = np.polyfit(cells, seconds, 1)
    return float(fixed), float(per_cell)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default-cells", type=int, nargs="+", default=[25, 50, 125])
    parser.add_argument("--paper-cells", type=int, nargs="+", default=[50, 125])
    parser.add_argument("--name", default="thickness")
    args = parser.parse_args()

    preset = yaml.safe_load((ROOT / "workflow/presets/thickness.yaml").read_text())
    variants = [v.get("thickness_cells") or 50 for v in preset["datasets"]["training"]["variants"].values()]
    sweep = preset["datasets"]["sweeps"]["thickness"]["values"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"default": [measure("default", c, 0, Path(tmp)) for c in args.default_cells],
                "paper": [measure("paper", c, 0, Path(tmp)) for c in args.paper_cells]}
        phonons = measure("default", 50, 4, Path(tmp))
    fits = {scale: linear_fit(r) for scale, r in rows.items()}

    def predicted(scale, cells):
        fixed, per_cell = fits[scale]
        return fixed + per_cell * cells

    costs = {}
    for scale in SCALES:
        base = 8 * predicted(scale, 50)
        added = 8 * sum(predicted(scale, c) for c in variants)
        costs[scale] = {"base_training_s": base, "added_variants_s": added, "ratio": (base + added) / base,
                        "sweep_s": sum(predicted(scale, c) for c in sweep)}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows, "fits": fits, "frozen_phonons_4": phonons,
              "preset_variant_cells": variants, "preset_sweep_cells": sweep, "costs": costs}
    (HERE / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = [f"Thickness-diverse training, simulation cost ({result['machine']}; one RM training class, 2x2 cells, one core per job).", "",
             "| scale | thickness (cells / nm) | wall time | peak memory |", "|---|---|---|---|"]
    for scale, measured in rows.items():
        for r in measured:
            lines.append(f"| {scale} ({SCALES[scale]['gpts_per_cell'] * 2} px patterns, {SCALES[scale]['scan_px']}^2 scan) | "
                         f"{r['cells']} / {0.4 * r['cells']:.0f} | {r['seconds']:.1f} s | {r['peak_rss_gb']:.2f} GB |")
    lines.append(f"| default, 4 frozen-phonon configurations | 50 / 20 | {phonons['seconds']:.1f} s | {phonons['peak_rss_gb']:.2f} GB |")
    lines += ["", "Time is a fixed part (one pattern per probe position) plus a part linear in thickness (PRISM builds the "
              "S-matrix slice by slice): " + "; ".join(f"{scale} {fixed:.1f} s + {per_cell:.3f} s per cell" for scale, (fixed, per_cell) in fits.items()) + ".",
              f"4 frozen-phonon configurations cost {phonons['seconds'] / predicted('default', 50):.1f}x a static lattice.", "",
              f"Added by `workflow/presets/thickness.yaml` (variants at {', '.join(map(str, variants))} cells for 8 classes, "
              f"and a thickness sweep of one class at {', '.join(map(str, sweep))} cells), in core-hours of simulation:", "",
              "| scale | 8 base training classes | + variants | training simulation, x base | + thickness sweep |", "|---|---|---|---|---|"]
    for scale, c in costs.items():
        lines.append(f"| {scale} | {c['base_training_s'] / 3600:.3f} h | {c['added_variants_s'] / 3600:.3f} h | {c['ratio']:.1f} | {c['sweep_s'] / 3600:.3f} h |")
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))))
    else:
        main()
