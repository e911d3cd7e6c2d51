"""The registry of predictor kinds: every kind named, found from its model file, described and
loaded once, and no other module parsing a predictor's name."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from polarmap import predictors
from polarmap.models import PcaKnn
from polarmap.cells import ScanCells
from polarmap.unitcell import UnitCellNet
from test_bad_input import save_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLING = {"detector_mrad_per_px": 3.0, "crop_px": 32, "energy_kev": 200.0, "semiangle_mrad": 24.0}


def test_predictor_names_are_described():
    assert predictors.describe("vgg16-prototype-augmentation_filter-imagenet-seed888") == predictors.PredictorInfo(
        family="vgg16-prototype-augmentation_filter-imagenet", label="VGG (Proto, ImageNet)", encoder="vgg16",
        objective="prototype", configuration="augmentation_filter", pretrained="imagenet", regime="paper", seed=888)
    assert predictors.describe("pca_knn-none-seed5").label == "PCA" and predictors.describe("com").label == "CoM"
    diverse = predictors.describe("conv-classification-augmentation_filter-scratch-diverse-domain_randomisation-seed7")
    assert diverse.family == "conv-classification-augmentation_filter-scratch-diverse-domain_randomisation"
    assert diverse.regime == "diverse+domain_randomisation" and diverse.seed == 7
    assert diverse.label == "Conv (Cls, diverse data, domain rand.)"
    with pytest.raises(ValueError, match="not a predictor"):
        predictors.describe("my-model")


def _stored(tmp_path, name, write) -> Path:
    path = tmp_path / "models" / name / predictors.model_file(name)
    path.parent.mkdir(parents=True)
    write(path)
    return path


def test_every_kind_round_trips_from_its_name_through_its_file_to_its_answers(tmp_path):
    """Each kind: its name built, recognised, described; its model file found from the name and
    the name from the file; loaded once, with its sampling; answering per pattern or per cell."""
    rng = np.random.default_rng(0)
    patterns = rng.random((6, 32, 32)).astype(np.float32)
    beam_shift = rng.normal(size=(6, 2))

    neural = predictors.neural_name("conv", "classification", "none", "scratch", 3)
    neural_path = _stored(tmp_path, neural, lambda p: save_model(p, sampling=json.dumps(SAMPLING)))
    pca_knn = predictors.pca_knn_name("augmentation", 2)

    def write_pca(path):
        model = PcaKnn.fit(rng.random((40, 32 * 32)), rng.integers(0, 8, 40), 5, 3)
        model.arrays["meta"] = np.array(json.dumps({"sampling": SAMPLING}))
        model.save(path)

    pca_path = _stored(tmp_path, pca_knn, write_pca)
    unit_cell = predictors.unit_cell_name(1)
    unit_cell_path = _stored(tmp_path, unit_cell, lambda p: torch.save({"kind": "unit_cell", "state_dict": UnitCellNet().state_dict()}, p))

    expected = {neural: ("neural", neural_path, 3), pca_knn: ("pca_knn", pca_path, 2), unit_cell: ("unit_cell", unit_cell_path, 1),
                predictors.COM: ("com", None, -1), predictors.column_fit_name("adf"): ("column_fit", None, -1),
                predictors.found_lattice_name("idpc"): ("found_lattice", None, -1)}
    for name, (kind, path, seed) in expected.items():
        assert predictors.kind_of(name).key == kind and predictors.describe(name).seed == seed
        assert bool(predictors.model_file(name)) == (path is not None)
        if path is not None:
            assert predictors.kind_of(path).key == kind and predictors.predictor_name(path) == name
            assert predictors.model_inputs(path) == [str(path)]
        loaded = predictors.load(path or name)
        assert loaded.kind.key == kind and loaded.name == name and loaded.device == "cpu"
        assert loaded.kind.per_cell == (kind in ("unit_cell", "column_fit", "found_lattice"))
        if kind in ("neural", "pca_knn"):
            assert loaded.sampling == SAMPLING
            classes, angles, _, confidence = loaded.predict(patterns, None)
            assert classes.shape == (6,) and ((classes >= 0) & (classes < 8)).all() and (angles is None) == (kind == "pca_knn")
            assert ((confidence >= 0) & (confidence <= 1)).all()
    assert list(predictors.load("com").predict(patterns, beam_shift)[0]) == list(predictors.com_baseline(beam_shift))
    # per cell: a 2x2-cell scan of 16x16 positions, one answer per cell
    cells = ScanCells(step_angstrom=0.5, origin_angstrom=(0.0, 0.0), cell_angstrom=4.0, cells=(2, 2))
    images = {"adf": rng.random((16, 16)), "com_mrad": rng.normal(size=(16, 16, 2))}
    classes, angles = predictors.load(unit_cell_path, per_cell=True).predict(images, cells)
    assert classes.shape == angles.shape == (4,) and ((classes >= 0) & (classes < 8)).all()
    assert predictors.kind_of("x/model.pt", per_cell=True).key == "unit_cell" and predictors.kind_of("x/model.pt").key == "neural"


def test_untrained_predictors_refuse_an_out_of_distribution_file_and_unknown_images(tmp_path):
    with pytest.raises(ValueError, match="the CoM baseline has no training distribution"):
        predictors.load("com", ood_path=tmp_path / "ood.npz")
    with pytest.raises(ValueError, match="column fitting works on adf or idpc, not 'abf'"):
        predictors.load("column_fit_abf")
    with pytest.raises(ValueError, match=re.escape("give a model file (model.pt)")):
        predictors.load("nothing", per_cell=True)


def test_only_the_registry_parses_predictor_names():
    """The string tests that decide what a predictor is appear in predictors.py alone."""
    tests = re.compile(r'(pca_knn-|unit_cell-|column_fit_|found_lattice_)(?!name\b|images\b)|(==|or|return) "com"|suffix == "\.(npz|pt)"')
    sources = [*(ROOT / "src/polarmap").glob("*.py"), *(ROOT / "workflow/rules").glob("*.smk"), ROOT / "Snakefile"]
    found = [f"{path.name}:{n}" for path in sources if path.name != "predictors.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if tests.search(line)]
    assert not found, found


def test_the_config_check_and_the_tables_know_every_registered_encoder():
    """The config check reads the registry from models.py's source (a Snakemake parse must not
    import torch): it, the registry and the tables' labels agree, and the schema lists none."""
    import yaml

    from polarmap.config import registered_encoders
    from polarmap.models import ENCODER_LABELS, ENCODERS, IMAGENET_WEIGHTS

    schema = yaml.safe_load((ROOT / "src/polarmap/data/config.schema.yaml").read_text())
    run = schema["properties"]["training"]["properties"]["runs"]["items"]["properties"]
    assert "enum" not in run["encoders"]["items"]
    assert registered_encoders() == list(ENCODERS) == list(ENCODER_LABELS)
    assert set(IMAGENET_WEIGHTS) <= set(ENCODERS)