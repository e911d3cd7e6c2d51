"""Scheduler overhead per job through a local one-node Slurm (tests/local_slurm.py, needs root and
the Debian Slurm packages), and the estimated wall time of the paper preset on N GPUs from
measured per-job times.

    python benchmarks/slurm.py [--jobs 10]

The overhead is the wall time of N trivial jobs through `--profile workflow/profiles/slurm`
minus the same jobs run locally, per job. The paper-preset estimate counts the preset's jobs
(from its config) and multiplies them by per-job times measured in benchmarks/*.json (simulation
on one core, training and inference on an H100). Writes benchmarks/slurm.md and .json.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

TRIVIAL = """
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule one:
    output: "out/{{i}}.txt"
    log: "logs/{{i}}.log"
    shell: "echo {{wildcards.i}} > {{output}} 2> {{log}}"
"""


def run(workdir: Path, env: dict, *args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(workdir / "Snakefile"), *args],
                   cwd=workdir, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def overhead(n_jobs: int) -> dict:
    from local_slurm import local_cluster

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("local", "slurm"):
            (tmp / name).mkdir()
            (tmp / name / "Snakefile").write_text(TRIVIAL.format(n=n_jobs))
        (tmp / "fast").mkdir()
        (tmp / "fast" / "Snakefile").write_text(TRIVIAL.format(n=n_jobs))
        local = run(tmp / "local", dict(os.environ), "--cores", "2")
        profile = ["--profile", str(ROOT / "workflow/profiles/slurm"), "--jobs", "2", "--latency-wait", "5"]
        with local_cluster() as env:
            slurm = run(tmp / "slurm", env, *profile)
            fast = run(tmp / "fast", env, *profile, "--slurm-init-seconds-before-status-checks", "2")
    return {"jobs": n_jobs, "local_s": local, "slurm_s": slurm, "overhead_per_job_s": (slurm - local) / n_jobs,
            "slurm_fast_polling_s": fast, "overhead_per_job_fast_polling_s": (fast - local) / n_jobs}


def paper_estimate(overhead_per_job: float) -> dict:
    """GPU hours of the paper preset's training and prediction, and its CPU simulation."""
    from polarmap.config import load_config, simulated_datasets, training_jobs

    config = load_config(ROOT / "workflow/presets/paper.yaml")
    training = json.loads((HERE / "training_gpu.json").read_text())
    simulation = json.loads((HERE / "simulation.json").read_text())
    inference = json.loads((HERE / "inference_gpu.json").read_text()) if (HERE / "inference_gpu.json").exists() else None
    real_epoch = max(e["patterns_per_s"] for e in training["real_epochs"])  # Conv, augmented, workers
    step_alone = {r["encoder"]: r["train_step_patterns_per_s"] for r in training["results"]}
    # the Conv's real epoch runs at this share of its bare step: apply it to every encoder
    efficiency = real_epoch / step_alone["conv"]
    patterns = 0.43 * 8 * 128 * 128 * 0.8  # the filter keeps ~43 % (paper), 80 % train
    epochs = config["training"]["max_epochs"]
    jobs = training_jobs(config)
    gpu_seconds = sum(epochs * patterns / (step_alone[job["encoder"]] * efficiency) for job in jobs.values())
    sets = simulated_datasets(config)
    per_class = simulation["prism_full_class"]["seconds"]  # one 2x2x50 class on one core
    sim_seconds = sum(per_class * (d["supercell"][0] * d["supercell"][1] / 4) * (d["supercell"][2] / 50) for d in sets.values())
    rows = []
    for gpus in (1, 4, 8, 16):
        train_wall = gpu_seconds / gpus + len(jobs) / gpus * overhead_per_job
        rows.append({"gpus": gpus, "training_h": train_wall / 3600})
    return {"training_jobs": len(jobs), "epochs": epochs, "train_patterns": patterns, "gpu_hours_training": gpu_seconds / 3600,
            "simulation_cpu_hours": sim_seconds / 3600, "simulated_sets": len(sets), "by_gpus": rows,
            "inference_measured": inference is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    measured = overhead(args.jobs)
    estimate = paper_estimate(measured["overhead_per_job_s"])
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "overhead": measured, "paper_estimate": estimate}
    (HERE / "slurm.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        f"Slurm benchmark ({figures['machine']}; local one-node Slurm 22.05, Snakemake slurm executor 2.8).",
        "",
        f"{measured['jobs']} trivial jobs: {measured['local_s']:.1f} s locally, {measured['slurm_s']:.1f} s through "
        f"`--profile workflow/profiles/slurm` (2 at a time): {measured['overhead_per_job_s']:.1f} s of overhead per job, most of it "
        f"the executor's first status check 40 s after a submission; with `--slurm-init-seconds-before-status-checks 2`: "
        f"{measured['slurm_fast_polling_s']:.1f} s, {measured['overhead_per_job_fast_polling_s']:.1f} s per job.",
        "",
        f"Paper preset: {estimate['training_jobs']} training jobs of up to {estimate['epochs']} epochs over ~{estimate['train_patterns']:.0f} "
        f"patterns, {estimate['gpu_hours_training']:.1f} GPU hours on an H100 (measured step rates x the measured real-epoch efficiency); "
        f"{estimate['simulated_sets']} simulated sets, {estimate['simulation_cpu_hours']:.1f} CPU-core hours (PRISM, 61 s per 2x2x50 class, "
        "scaled by cell area and thickness).",
        "",
        "| GPUs | training wall time (h), early stopping ignored |",
        "|---|---|",
    ]
    lines += [f"| {r['gpus']} | {r['training_h']:.2f} |" for r in estimate["by_gpus"]]
    (HERE / "slurm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
