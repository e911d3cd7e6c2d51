"""The Slurm profile on a real one-node Slurm (started here, stopped by PID): a small study end to
end through the Snakemake Slurm executor, training jobs on the GPU partition with a GPU each, and
a job that fails once being retried with more runtime."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from local_slurm import available, jobs, local_cluster

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(available() is not None, reason=f"local Slurm: {available()}")


def snakemake(workdir, env, *args, snakefile=ROOT / "Snakefile"):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--profile", str(ROOT / "workflow/profiles/slurm"),
         "--jobs", "4", "--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "2", *args],
        capture_output=True, text=True, cwd=workdir, env=env,
    )


def merged(base: dict, preset: dict) -> dict:
    """A preset over the base config as Snakemake merges them: dicts merged, anything else replaced."""
    out = dict(base)
    for key, value in preset.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as env:
        yield env


def test_a_study_runs_through_slurm_with_training_on_gpus(cluster, tmp_path):
    """The tests preset cut to one test set and one model family: every rule kind is submitted."""
    config = merged(yaml.safe_load((ROOT / "config.yaml").read_text()), yaml.safe_load((ROOT / "workflow/presets/tests.yaml").read_text()))
    config["study"] = "slurm"
    config["datasets"].update(tests={"3S": config["datasets"]["tests"]["3S"]}, experiment_like={}, sweeps={}, defect={"enabled": False})
    config["training"] = {"runs": [{"encoders": ["conv"], "objectives": ["classification", "prototype"], "configurations": ["none"], "max_epochs": 1}],
                          "batch_size": 16, "pca_knn": {"enabled": False}}
    config["preprocessing"]["configurations"] = ["none"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))  # the whole study: nothing merged in
    result = snakemake(tmp_path, cluster)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "results/slurm/tables/table_none.md").exists() and (tmp_path / "results/slurm/figures/maps_none.png").exists()
    submitted = [job for job in jobs(cluster) if job.get("WorkDir") == str(tmp_path)]
    names = [job["Comment"] for job in submitted]
    assert sum(name.startswith("rule_train_") for name in names) == 2
    for job in submitted:
        assert job["JobState"] == "COMPLETED", job
        if job["Comment"].startswith("rule_train_"):
            assert job["Partition"] == "gpu" and job["TresPerJob"] == "gres:gpu:1", job
        else:
            assert job["Partition"] == "cpu" and "gpu" not in job.get("TresPerJob", ""), job
    # the cheap rules ran locally: only simulation, preprocessing, virtual images (a whole raw set
    # read), training, the out-of-distribution calibration (every training pattern) and prediction queued
    assert {name.split("_wildcards")[0] for name in names} == {
        "rule_simulate", "rule_preprocess", "rule_virtual_images", "rule_train", "rule_calibrate_ood", "rule_predict"}, names


FLAKY = """
rule flaky:
    output: "done.txt"
    log: "flaky.log"
    resources: runtime=lambda wildcards, attempt: 10 * attempt
    shell: "if [ -e first_attempt ]; then echo ok > {output}; else touch first_attempt; exit 1; fi 2> {log}"
"""


def test_a_job_that_fails_once_is_retried_with_more_runtime(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(FLAKY)
    result = snakemake(tmp_path, cluster, snakefile=tmp_path / "Snakefile")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "done.txt").read_text() == "ok\n"
    attempts = [job for job in jobs(cluster) if job.get("WorkDir") == str(tmp_path)]
    assert [job["JobState"] for job in attempts] == ["FAILED", "COMPLETED"]
    assert [job["TimeLimit"] for job in attempts] == ["00:10:00", "00:20:00"]
