import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polarmap.config import (
    dataset_job_settings, load_config, other_mode_study, simulated_datasets, split_job_settings, sweep_points, training_jobs,
    training_set_names, validate_config,
)

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


def test_thickness_preset_over_the_default_study():
    """It restates only what it changes, so it is valid as Snakemake merges it over config.yaml."""
    from test_slurm import merged

    config = merged(yaml.safe_load((ROOT / "config.yaml").read_text()), yaml.safe_load((ROOT / "workflow/presets/thickness.yaml").read_text()))
    config = validate_config(config, "thickness preset")
    sets = simulated_datasets(config)
    assert sum(s["role"] == "training_variant" for s in sets.values()) == 3 * 8
    assert [sets[f"thickness_{c}"]["supercell"][2] for c in (10, 150)] == [10, 150]
    assert {job["training_data"] for job in training_jobs(config).values()} == {"base", "diverse"}


def test_reproduction_preset_over_the_default_study():
    """Both modes of the default study, trained to a plateau rather than to an epoch cap."""
    from test_slurm import merged

    config = merged(yaml.safe_load((ROOT / "config.yaml").read_text()), yaml.safe_load((ROOT / "workflow/presets/reproduction.yaml").read_text()))
    faithful = validate_config(other_mode_study(config), "faithful")
    config = validate_config(config, "reproduction preset")
    assert config["evaluation"]["both_modes"] and faithful["study"] == "reproduction_faithful"
    assert (config["simulation"]["frozen_phonon_configs"], faithful["simulation"]["frozen_phonon_configs"]) == (2, 0)
    jobs = training_jobs(config)
    assert len(jobs) == 10 and all(job["patience"] < job["max_epochs"] for job in jobs.values())


def test_paper_preset_has_the_paper_sizes():
    config = load_config(ROOT / "workflow/presets/paper.yaml")
    assert config["simulation"]["scan_px"] == 128
    assert config["simulation"]["gpts_per_cell"] * config["simulation"]["probe_window_cells"] == 256
    assert config["datasets"]["tests"]["2S"]["supercell"] == [6, 6, 125]


def test_the_other_mode_study_is_the_same_config_in_the_other_mode():
    """evaluation.both_modes: the other study takes its mode's own crystals (config.yaml's one
    frozen-phonon configuration is a corrected-mode choice), keeps every other setting, and runs
    no third study."""
    given = yaml.safe_load((ROOT / "config.yaml").read_text()) | {"evaluation": {"both_modes": True}}
    faithful_given = other_mode_study(given)
    faithful = validate_config(copy.deepcopy(faithful_given), "faithful")
    assert (faithful["study"], faithful["mode"]) == ("default_faithful", "faithful")
    assert faithful["structure"]["a_site_order"] == "ordered" and faithful["simulation"]["frozen_phonon_configs"] == 0
    assert faithful["simulation"]["scan_origin"] == "zero"
    assert faithful["simulation"]["scan_px"] == 32 and not faithful["evaluation"]["both_modes"]
    # the published optimiser (at corrected's 1e-3 on raw inputs the published Conv stays at chance)
    published = {"lr": 2e-4, "batch_size": 128, "weight_decay": 1e-4, "standardize_inputs": False}
    assert all(job.items() >= published.items() for job in training_jobs(faithful).values())
    chosen = {"lr": 1e-3, "batch_size": 64, "weight_decay": 0.0, "standardize_inputs": True}
    assert all(job.items() >= chosen.items() for job in training_jobs(validate_config(copy.deepcopy(given), "c")).values())
    assert given["mode"] == "corrected" and given["evaluation"] == {"both_modes": True}
    assert given["simulation"]["frozen_phonon_configs"] == 1
    corrected = validate_config(other_mode_study(faithful_given | {"study": "f"}), "corrected")
    assert (corrected["study"], corrected["mode"]) == ("f_corrected", "corrected")
    assert corrected["structure"]["a_site_order"] == "random" and corrected["simulation"]["frozen_phonon_configs"] == 2
    with pytest.raises(ValueError, match=r"evaluation.both_modes runs the other mode itself: leave evaluation.compare_with empty"):
        validate_config(given | {"evaluation": {"both_modes": True, "compare_with": "results/faithful"}}, "c")


def test_bad_value_names_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("simulation:\n  method: fast\n")
    with pytest.raises(ValueError, match=r"invalid value for 'simulation.method'"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("datasets:\n  tests:\n    9S: {polarization: UP, supercell: [2, 2, 5]}\n")
    with pytest.raises(ValueError, match=r"'datasets.tests.9S.polarization'"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("training:\n  runs:\n    - {encoders: [conv, vit], objectives: [classification]}\n")
    with pytest.raises(ValueError, match=r"'training.runs.0.encoders': 'vit' is not a registered encoder \(conv, vgg16, resnet50\)"):
        load_config(tmp_path / "e.yaml")


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
    assert result.returncode == 1
    assert "polarmap: config: invalid value for 'simulation.method': 'fast' is not one of ['prism', 'multislice']" in result.stderr
    assert not (ROOT / "results" / "bad").exists()


def test_snakemake_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "No validator found" not in result.stdout + result.stderr


def test_thickness_diverse_training_and_domain_randomisation_are_study_axes():
    config = validate_config({
        "seeds": [1],
        "datasets": {"training": {"classes": ["RM", "LD"], "variants": {"t50nm": {"thickness_cells": 125, "mistilt_mrad": [1, 0], "frozen_phonon_configs": 4}}}},
        "training": {"runs": [{"encoders": ["conv"], "objectives": ["classification"], "configurations": ["none", "augmentation_filter"],
                               "training_data": ["base", "diverse"], "augmentations": ["paper", "domain_randomisation"]}]},
    })
    variant = simulated_datasets(config)["train_LD_t50nm"]
    assert variant["supercell"] == [2, 2, 125] and variant["mistilt_mrad"] == [1, 0] and variant["role"] == "training_variant"
    job = dataset_job_settings(config, "train_LD_t50nm")
    assert job["simulation"]["frozen_phonon_configs"] == 4 and "simulation" not in job["dataset"]
    assert dataset_job_settings(config, "train_LD")["simulation"]["frozen_phonon_configs"] == 2  # corrected mode's default
    # "none" does not augment, so it has no domain-randomised twin
    assert sorted(training_jobs(config)) == [
        "conv-classification-augmentation_filter-scratch-diverse-domain_randomisation-seed1",
        "conv-classification-augmentation_filter-scratch-diverse-seed1",
        "conv-classification-augmentation_filter-scratch-domain_randomisation-seed1",
        "conv-classification-augmentation_filter-scratch-seed1",
        "conv-classification-none-scratch-diverse-seed1",
        "conv-classification-none-scratch-seed1",
    ]
    assert training_set_names(config, "diverse") == ["train_RM", "train_LD", "train_RM_t50nm", "train_LD_t50nm"]
    assert split_job_settings(config, "none", 1, "diverse")["sets_per_class"] == 2
    config["datasets"]["training"]["variants"] = {}
    with pytest.raises(ValueError, match="training_data 'diverse' needs datasets.training.variants"):
        training_jobs(config)


def test_a_thickness_sweep_of_a_test_set_resimulates_it_clean():
    config = validate_config({"datasets": {"tests": {"3S": {"polarization": "RM", "supercell": [2, 2, 50]}},
                                           "sweeps": {"thickness": {"base": "3S", "knob": "thickness_cells", "values": [10, 150]}}}})
    sets = simulated_datasets(config)
    assert sets["thickness_150"]["supercell"] == [2, 2, 150] and sets["thickness_150"]["role"] == "test"
    assert sweep_points(config)["thickness"]["points"] == [
        {"dataset": "3S", "value": 50}, {"dataset": "thickness_10", "value": 10}, {"dataset": "thickness_150", "value": 150}]
    config["datasets"]["sweeps"] = {"dose": {"base": "3S", "knob": "dose_e_per_pattern", "values": [100]}}
    with pytest.raises(ValueError, match="only thickness_cells can be swept on it"):
        simulated_datasets(config)


def test_a_unit_cell_model_needs_a_held_out_crystal():
    with pytest.raises(ValueError, match="training.unit_cell needs held-out crystals to validate on: set datasets.training.crystals"):
        validate_config({"training": {"unit_cell": {"enabled": True}}})
    assert validate_config({"training": {"unit_cell": {"enabled": True}}, "datasets": {"training": {"crystals": 2}}})["training"]["unit_cell"]["epochs"] == 15
