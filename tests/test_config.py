import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polarmap.config import dataset_job_settings, load_config, simulated_datasets, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_schema_key_has_type_default_and_description():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())

    def walk(properties, path):
        for name, sub in properties.items():
            sub_resolved = schema["definitions"][sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
            assert "default" in sub, f"{path}{name} has no default"
            assert "description" in sub or "description" in sub_resolved, f"{path}{name} has no description"
            assert "type" in sub_resolved, f"{path}{name} has no type"
            if "properties" in sub:
                walk(sub["properties"], f"{path}{name}.")

    walk(schema["properties"], "")


def test_empty_config_gets_all_defaults():
    config = validate_config({})
    assert config["simulation"]["semiangle_mrad"] == 24
    assert config["datasets"]["training"]["supercell"] == [2, 2, 50]
    assert len(simulated_datasets(config)) == 8 + 1


@pytest.mark.parametrize("preset", ["config.yaml", "workflow/presets/paper.yaml", "workflow/presets/tests.yaml"])
def test_presets_are_valid(preset):
    config = load_config(ROOT / preset)
    assert {"1S", "2S", "3S", "4S", "5S", "6S", "7S"} <= set(simulated_datasets(config))


def test_paper_preset_has_the_paper_sizes():
    config = load_config(ROOT / "workflow/presets/paper.yaml")
    assert config["simulation"]["scan_px"] == 128
    assert config["simulation"]["gpts_per_cell"] * config["simulation"]["probe_window_cells"] == 256
    assert config["datasets"]["tests"]["2S"]["supercell"] == [6, 6, 125]


def test_bad_value_names_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("simulation:\n  method: fast\n")
    with pytest.raises(ValueError, match=r"invalid value for 'simulation.method'"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("datasets:\n  tests:\n    9S: {polarization: UP, supercell: [2, 2, 5]}\n")
    with pytest.raises(ValueError, match=r"'datasets.tests.9S.polarization'"):
        load_config(tmp_path / "d.yaml")


def test_job_settings_hold_only_what_the_job_depends_on():
    config = validate_config({})
    settings = dataset_job_settings(config, "train_RM")
    assert set(settings) == {"name", "dataset", "structure", "simulation"}
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        dataset_job_settings(config, "nope")


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path):
    (tmp_path / "bad.yaml").write_text("study: bad\nsimulation:\n  method: fast\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(tmp_path / "bad.yaml")],
        capture_output=True, text=True, cwd=ROOT,
    )
    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert "'fast' is not one of ['prism', 'multislice']" in output
    assert "instance['simulation']['method']" in output
    assert not (ROOT / "results" / "bad").exists()


def test_snakemake_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "No validator found" not in result.stdout + result.stderr
