"""`polarmap map` on a paper-scale Merlin file with the code of an earlier commit and with this
tree, on the same file (issue 26): time, peak memory and bytes written.

    python benchmarks/map_before_after.py [--before 2cad8eb] [--name map_before_after]

The file and the stand-in PCA+kNN model are benchmarks/realdata_speed.py's (a 128x128 scan of
256x256 frames, 2.15 GB); the earlier commit is checked out in a temporary git worktree and run
with its own package first on the path. Each map in its own process, cold (the file's pages
dropped) then warm. 2cad8eb is the last commit before the map streamed its input: it imported the
whole scan into a float32 working copy, read it back and deleted it.
Writes benchmarks/<name>.md and benchmarks/<name>.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from realdata_speed import MAP_ARGUMENTS, evict, frame_rows, measured, stand_in_model, write_mib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCAN = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="2cad8eb", help="the earlier commit")
    parser.add_argument("--name", default="map_before_after")
    args = parser.parse_args()
    here = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    results = {"before": args.before, "after": here, "scan": SCAN, "runs": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        folder = Path(folder)
        mib = folder / "scan.mib"
        write_mib(mib, frame_rows(SCAN), (SCAN, SCAN))
        results["file_gb"] = round(mib.stat().st_size / 1e9, 3)
        (folder / "model").mkdir()
        model = stand_in_model(mib, folder / "model")
        worktree = folder / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree), args.before], check=True)
        try:
            for label, source in (("before", worktree / "src"), ("after", ROOT / "src")):
                for cache in ("cold", "warm"):
                    if cache == "cold":
                        evict(mib)
                    out = folder / "map"
                    shutil.rmtree(out, ignore_errors=True)
                    command = ["polarmap.cli", "map", str(mib), "--model", str(model), "--out", str(out), *MAP_ARGUMENTS]
                    results["runs"][f"{label} {cache}"] = measured(command, env={"PYTHONPATH": str(source)})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=True)
    (HERE / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# `polarmap map` before and after the streamed input ({SCAN}x{SCAN} scan, {results['file_gb']} GB Merlin file)",
        "",
        f"`python benchmarks/map_before_after.py --before {args.before}` on {os.cpu_count()} CPU cores: the map per pattern (stand-in "
        f"PCA+kNN model) and per cell, with the code of {args.before} and of {here}. Peak memory is what the process allocates; "
        "written is every byte it wrote (the working copy included).",
        "",
        "| code | cache | time (s) | peak memory (GB) | written (GB) |",
        "|---|---|---|---|---|",
        *[f"| {name.split()[0]} ({results[name.split()[0]]}) | {name.split()[1]} | {run['seconds']} | {run['peak_gb']} | {run['written_mb'] / 1e3:.2f} |"
          for name, run in results["runs"].items()],
        "",
    ]
    (HERE / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
