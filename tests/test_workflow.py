"""The tests preset end to end through Snakemake, then incremental reruns from its own plan."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polarmap import io

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir, *args):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--workflow-profile", str(ROOT / "workflow/profiles/default"), "--cores", "2", *args],
        capture_output=True, text=True, cwd=workdir,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    shutil.copy(ROOT / "config.yaml", workdir)
    shutil.copy(ROOT / "workflow/presets/tests.yaml", workdir)
    result = snakemake(workdir, "--configfile", "tests.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_every_data_set_is_simulated_valid_and_logged(study):
    results = study / "results/tests"
    summary = (results / "datasets/summary.tsv").read_text().splitlines()
    assert len(summary) == 1 + 8 + 7 + 1
    for h5 in (results / "datasets").glob("*.h5"):
        with io.open_dataset(h5, check_values=True) as f:
            assert f["patterns"].shape == (4, 4, 32, 32)
        assert (results / f"benchmarks/simulate/{h5.stem}.tsv").exists()
        assert (results / f"logs/simulate/{h5.stem}.log").exists()
        assert (results / f"qstem/{h5.stem}/{h5.stem}.qsc").exists()
    assert not list(results.rglob("*.partial")) and not list(results.rglob("*.tmp"))


def planned_jobs(workdir, *args):
    result = snakemake(workdir, "--dry-run", "--quiet", "rules", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_nothing_reruns_when_nothing_changed(study):
    assert "Nothing to be done" in snakemake(study, "--configfile", "tests.yaml", "--dry-run").stdout


def test_changing_one_test_set_reruns_only_its_jobs(study):
    config = (study / "tests.yaml").read_text().replace("6S: {polarization: LD", "6S: {polarization: MD")
    (study / "changed.yaml").write_text(config)
    plan = planned_jobs(study, "--configfile", "changed.yaml")
    counts = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines() if line.split()[1:2] and line.split()[1].isdigit()}
    assert counts == {"all": 1, "dataset_summary": 1, "qstem_inputs": 1, "simulate": 1, "structure": 1, "total": 5}, plan
