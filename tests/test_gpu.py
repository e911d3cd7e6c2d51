"""The GPU paths: CUDA training with mixed precision, and abTEM on the GPU. Skipped on machines
without them (CI); run on a GPU machine with `pytest tests/test_gpu.py`."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from polarmap.evaluation import predict_patterns
from polarmap.simulation import SimulationSettings, _Simulator, geometry
from polarmap.structures import build_supercell
from polarmap.training import TEST, TrainSettings, load_training_data, train
from test_training import training_data  # noqa: F401 (a fixture)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_cupy = pytest.mark.skipif(importlib.util.find_spec("cupy") is None or not torch.cuda.is_available(), reason="no cupy/GPU")


@needs_cuda
@pytest.mark.parametrize("objective", ["classification", "regression", "prototype"])
def test_cuda_mixed_precision_training_learns_and_runs_on_the_cpu(training_data, tmp_path, objective):  # noqa: F811
    split, preprocessed = training_data
    settings = TrainSettings(encoder="conv", objective=objective, configuration="none", max_epochs=4, lr=1e-3, device="cuda")
    result = train(split, preprocessed, tmp_path, settings, progress=False)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["device"] == "cuda"
    assert result["synthetic_test_accuracy"] > 0.5  # chance is 0.125
    # the saved model is device-free: on the CPU it agrees with the accuracy measured on the GPU
    data = load_training_data(split, preprocessed)
    test = data["part"] == TEST
    on_cpu = predict_patterns(tmp_path / "model.pt", data["images"][test][:, 0], external=False, device="cpu")
    assert abs(float((on_cpu == data["labels"][test]).mean()) - result["synthetic_test_accuracy"]) < 0.05


@needs_cupy
@pytest.mark.parametrize("method", ["prism", "multislice"])
def test_gpu_simulation_matches_the_cpu(method):
    atoms = build_supercell((2, 2, 10), "RU")
    patterns = {}
    for device in ("cpu", "gpu"):
        settings = SimulationSettings(method=method, gpts_per_cell=64, scan_px=4, device=device)
        geo = geometry(atoms, settings)
        step = geo.extent[0] / settings.scan_px
        patterns[device] = _Simulator(atoms, geo, settings).rows(0, 2, (step, step)).astype(np.float64)
    difference = np.abs(patterns["gpu"] - patterns["cpu"]).max() / patterns["cpu"].max()
    assert difference < 1e-4, difference
