"""The reproduction preset's cost: measured on this machine from the run's own Snakemake log, and
estimated at the paper's scale (workflow/presets/paper.yaml in both modes, without the defect study) on 2 CPU cores and on
one GPU from that preset's dry run and the rates measured in benchmarks/{training,simulation}*.json.

    snakemake --workflow-profile workflow/profiles/default --configfile workflow/presets/reproduction.yaml
    python benchmarks/reproduction.py [--log .snakemake/log/<that run>.snakemake.log ...]

The log gives every job's start and end, so the wall time and each stage's job time of both modes
(the faithful study's rules are prefixed other_mode_); a run stopped and resumed is several logs,
its wall time their sum. The paper-scale estimate counts the jobs
of `snakemake --dry-run` on the paper preset with evaluation.both_modes, then: training, every job
to its epoch cap (early stopping ignored: an upper bound on the epochs) over its training patterns at
the measured step rate of its encoder; simulation, the measured PRISM time of one paper-scale
2x2x50 class (a static lattice, as faithful mode's) scaled by cell area and thickness, and for
corrected mode times the frozen-phonon factor this run measured (its two configurations against
faithful's none, same sets); everything else, this
run's job time scaled by the paper's patterns x detector pixels over this study's. Writes
benchmarks/reproduction.md and .json, and a copy of the run's reproduction table,
benchmarks/reproduction_table.md.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRESET = ROOT / "workflow/presets/reproduction.yaml"
OTHER = "other_mode_"

STAGES = {
    "simulation": ("structure", "qstem_inputs", "simulate", "experiment_like", "defect_structure", "relax_vacancy"),
    "preprocessing": ("preprocess", "split", "filter_counts", "dataset_summary", "virtual_images"),
    "training": ("train", "train_pca_knn", "train_unit_cell", "calibrate_ood"),
    "prediction": ("predict", "predict_unit_cell", "column_fit"),
    "tables and figures": ("audit", "tables", "compare_modes", "reproduction", "defect_study"),
}


def stage_of(rule: str) -> str:
    rule = rule.removeprefix(OTHER)
    return next((stage for stage, rules in STAGES.items() if rule in rules), "tables and figures")


def jobs_from_log(log: Path) -> tuple[list[dict], float]:
    """Every finished job's rule and seconds, and the wall time, from one Snakemake log."""
    started, finished, rule_of, dataset_of = {}, {}, {}, {}
    job = None
    stamp = None
    current = None
    for line in log.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            current = m.group(1)
        elif (m := re.fullmatch(r"\s+jobid: (\d+)", line)) and current:
            job = int(m.group(1))
            started[job], rule_of[job] = stamp, current
            current = None
        elif m := re.match(r"\s+wildcards: .*\bdataset=([^,\s]+)", line):
            dataset_of[job] = m.group(1)
        elif m := re.match(r"Finished jobid: (\d+)", line):
            finished[int(m.group(1))] = stamp
    if not finished:
        raise SystemExit(f"{log}: no finished job in this Snakemake log; give the log of the reproduction run (--log)")
    jobs = [{"rule": rule_of[job], "dataset": dataset_of.get(job, ""), "seconds": (finished[job] - started[job]).total_seconds()}
            for job in finished if job in started]
    # to the log's last time stamp: a run stopped mid-job counts the time of the job it lost
    return jobs, (stamp - min(started.values())).total_seconds()


def newest_log() -> Path:
    logs = sorted((ROOT / ".snakemake/log").glob("*.snakemake.log"), reverse=True)
    for log in logs:
        if "results/reproduction/" in log.read_text():
            return log
    raise SystemExit("no Snakemake log of the reproduction preset in .snakemake/log: run it first, or give --log")


def by_stage(jobs: list[dict]) -> dict:
    stages = {stage: {mode: {"jobs": 0, "seconds": 0.0, "largest_s": 0.0} for mode in ("corrected", "faithful")} for stage in STAGES}
    for job in jobs:
        entry = stages[stage_of(job["rule"])]["faithful" if job["rule"].startswith(OTHER) else "corrected"]
        entry["jobs"] += 1
        entry["seconds"] += job["seconds"]
        entry["largest_s"] = max(entry["largest_s"], job["seconds"])
    return stages


def paper_plan() -> dict:
    """Jobs per rule of the paper preset in both modes, without the defect study as the
    reproduction preset (snakemake's dry run)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as both:
        both.write("evaluation:\n  both_modes: true\ndatasets:\n  defect: {enabled: false}\n")
        both.flush()
        result = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--quiet", "rules", "--cores", "2",
                                 "--configfile", str(ROOT / "workflow/presets/paper.yaml"), both.name],
                                cwd=ROOT, capture_output=True, text=True, check=True)
    counts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def paper_estimate(measured_stages: dict, measured_jobs: list[dict]) -> dict:
    from polarmap.config import load_config, simulated_datasets, training_jobs
    from polarmap.preprocessing import CONFIGURATIONS

    paper = load_config(ROOT / "workflow/presets/paper.yaml")
    study = load_config(ROOT / "config.yaml")
    rates = {}
    for device, name in (("cpu", "training"), ("gpu", "training_gpu")):
        figures = json.loads((HERE / f"{name}.json").read_text())
        step = {r["encoder"]: r["train_step_patterns_per_s"] for r in figures["results"]}
        # a real epoch (augmentation, loading) runs at this share of the Conv's bare step
        efficiency = min(1.0, max(e["patterns_per_s"] for e in figures["real_epochs"]) / step["conv"])
        rates[device] = {"machine": figures["machine"], "patterns_per_s": {e: step[e] * efficiency for e in ("conv", "vgg16", "resnet50")}}
    patterns = 8 * paper["simulation"]["scan_px"] ** 2 * 0.8  # 80 % of the training sets train
    jobs = list(training_jobs(paper).values())

    def job_patterns(job: dict) -> float:
        return patterns * (0.43 if CONFIGURATIONS[job["configuration"]][1] else 1.0)  # the filter keeps ~43 % (paper)

    training_s = {device: 2 * sum(job["max_epochs"] * job_patterns(job) / rates[device]["patterns_per_s"][job["encoder"]] for job in jobs)
                  for device in rates}

    simulation = {"cpu": json.loads((HERE / "simulation.json").read_text()), "gpu": json.loads((HERE / "simulation_gpu.json").read_text())}
    sets = simulated_datasets(paper)
    cells = sum(d["supercell"][0] * d["supercell"][1] / 4 * d["supercell"][2] / 50 for d in sets.values())  # in 2x2x50 classes
    simulated = defaultdict(dict)
    for job in measured_jobs:
        if job["rule"].removeprefix(OTHER) == "simulate":
            simulated["faithful" if job["rule"].startswith(OTHER) else "corrected"][job["dataset"]] = job["seconds"]
    both = simulated["corrected"].keys() & simulated["faithful"].keys()
    # two configurations against none, on the sets both modes simulated
    phonon_factor = sum(simulated["corrected"][name] for name in both) / sum(simulated["faithful"][name] for name in both)
    # the measured class is a static lattice (faithful's); corrected's costs phonon_factor as much
    simulation_s = {device: cells * simulation[device]["prism_full_class"]["seconds"] * (1 + phonon_factor) for device in simulation}

    scale = (paper["simulation"]["scan_px"] / study["simulation"]["scan_px"]) ** 2 * (
        paper["simulation"]["gpts_per_cell"] / study["simulation"]["gpts_per_cell"]) ** 2
    rest = sum(m["seconds"] for stage in ("preprocessing", "prediction", "tables and figures") for m in measured_stages[stage].values())
    plan = paper_plan()
    return {
        "jobs": plan, "total_jobs": sum(plan.values()), "training_jobs_per_mode": len(jobs), "max_epochs": paper["training"]["max_epochs"],
        "train_patterns": patterns, "train_patterns_filtered": job_patterns({"configuration": "augmentation_filter"}), "rates": rates, "training_s": training_s, "simulated_classes_per_mode": cells,
        "frozen_phonon_factor": phonon_factor, "simulation_s": simulation_s, "other_stages_scale": scale,
        "other_stages_s": rest * scale,
    }


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h"


def minutes(seconds: float) -> str:
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, nargs="+", help="Snakemake logs of the reproduction run, one per segment of a run stopped "
                        "and resumed (default: the newest one in .snakemake/log)")
    args = parser.parse_args()
    logs = args.log or [newest_log()]
    segments = [jobs_from_log(log) for log in logs]
    jobs, wall = [job for segment, _ in segments for job in segment], sum(seconds for _, seconds in segments)
    names = ", ".join(log.name for log in logs)
    stages = by_stage(jobs)
    estimate = paper_estimate(stages, jobs)
    preset = yaml.safe_load(PRESET.read_text())
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "logs": names, "segments_s": [s for _, s in segments],
               "wall_s": wall, "jobs": len(jobs),
               "stages": stages, "preset": preset, "paper_estimate": estimate}
    (HERE / "reproduction.json").write_text(json.dumps(figures, indent=2) + "\n")

    lines = [
        f"Reproduction preset (`workflow/presets/reproduction.yaml`: the default study in both modes, models to a validation "
        f"plateau), {figures['machine']}, `--workflow-profile workflow/profiles/default` (2 jobs at a time; the pseudopotentials "
        f"not needed). From Snakemake's log{'s' if len(logs) > 1 else ''} {names}.",
        "",
        f"**Whole run: {minutes(wall)}** for {len(jobs)} jobs, corrected (results/reproduction) and faithful "
        "(results/reproduction_faithful) together" + (f" ({' + '.join(minutes(s) for _, s in segments)}: stopped and resumed)"
                                                      if len(segments) > 1 else "") + ".",
        "",
        "| stage | corrected: jobs | job time | largest job | faithful: jobs | job time | largest job |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, modes in stages.items():
        c, f = modes["corrected"], modes["faithful"]
        lines.append(f"| {stage} | {c['jobs']} | {c['seconds']:.0f} s | {c['largest_s']:.0f} s | {f['jobs']} | {f['seconds']:.0f} s | {f['largest_s']:.0f} s |")
    e = estimate
    cpu, gpu = e["rates"]["cpu"], e["rates"]["gpu"]
    lines += [
        "",
        "Job time is the sum over jobs; two run at a time, so the wall time is less than the sum. Training runs one job at a "
        "time on both cores.",
        "",
        f"**The paper's scale in both modes** (estimate; `paper.yaml` with `evaluation.both_modes: true` and the defect study off, dry run: "
        f"{e['total_jobs']} jobs, {e['training_jobs_per_mode']} training jobs per mode of up to {e['max_epochs']} epochs over "
        f"{e['train_patterns']:.0f} patterns ({e['train_patterns_filtered']:.0f} filtered), {e['simulated_classes_per_mode']:.0f} simulated 2x2x50-class equivalents per mode). "
        f"Training every job to its epoch cap at the measured step rates (Conv / VGG16 / ResNet50, patterns/s: "
        f"{' / '.join(f'{r:,.0f}' for r in cpu['patterns_per_s'].values())} on {cpu['machine']}; "
        f"{' / '.join(f'{r:,.0f}' for r in gpu['patterns_per_s'].values())} on {gpu['machine']}); simulation from one paper-scale "
        f"2x2x50 class (PRISM), corrected's frozen phonons costing x{e['frozen_phonon_factor']:.2f} faithful's (this run); "
        f"the other stages this run's job time x{e['other_stages_scale']:.0f} (patterns x detector pixels), on the CPU in both columns.",
        "",
        "| | 2 CPU cores | one GPU (H100, measured in an earlier session) |",
        "|---|---|---|",
        f"| training (both modes, to the epoch cap) | {hours(e['training_s']['cpu'])} | {hours(e['training_s']['gpu'])} |",
        f"| simulation (both modes) | {hours(e['simulation_s']['cpu'])} | {hours(e['simulation_s']['gpu'])} |",
        f"| everything else (CPU) | {hours(e['other_stages_s'])} | {hours(e['other_stages_s'])} |",
        f"| **in all** | **{hours(e['training_s']['cpu'] + e['simulation_s']['cpu'] + e['other_stages_s'])}** | "
        f"**{hours(e['training_s']['gpu'] + e['simulation_s']['gpu'] + e['other_stages_s'])}** |",
    ]
    (HERE / "reproduction.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # the table itself, kept with its run's cost (results/ is not in git)
    table = ROOT / "results/reproduction/tables/reproduction.md"
    (HERE / "reproduction_table.md").write_text(f"The reproduction preset's `tables/reproduction.md` (run of {names}; regenerate with the "
                                                 f"command in benchmarks/reproduction.py).\n\n" + table.read_text())


if __name__ == "__main__":
    main()
