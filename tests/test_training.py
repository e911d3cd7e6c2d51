"""Training on small preprocessed sets: determinism, resume after a kill, records, PCA+kNN."""

import json
import subprocess
import sys
import time
from dataclasses import asdict

import h5py
import numpy as np
import pytest
import torch

from polarmap import io
from polarmap.classes import CLASS_NAMES, class_direction
from polarmap.augmentation import AugmentationSettings
from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
from polarmap.splits import SplitSettings, make_split
from polarmap.models import load_model
from polarmap.training import TrainSettings, train, train_pca_knn
from test_io import attrs
from test_preprocessing import disc


@pytest.fixture(scope="module")
def training_data(tmp_path_factory):
    """8 classes of discs displaced along their class direction, 16x16 scans of 40x40 patterns."""
    folder = tmp_path_factory.mktemp("training")
    rng = np.random.default_rng(3)
    preprocessed = []
    for k, name in enumerate(CLASS_NAMES):
        d_col, d_row = class_direction(name)
        amplitude = rng.uniform(0, 1.5, size=(16, 16))
        patterns = np.stack([[disc(40, centre=(20 + a * d_row, 20 + a * d_col), radius=6) for a in row] for row in amplitude])
        io.write_dataset(folder / f"train_{name}.h5", patterns, np.full((16, 16), k, np.int8), attrs(name=f"train_{name}", classes=[name], supercell="2x2x50"))
        preprocess_dataset(folder / f"train_{name}.h5", folder / f"p_{name}.h5", PreprocessSettings(crop_px=33), True, progress=False)
        preprocessed.append(folder / f"p_{name}.h5")
    split = folder / "split.npz"
    make_split(preprocessed, split, "augmentation", 888, SplitSettings(), SplitSettings(fractions=(0.9, 0.1)))
    return split, preprocessed


SETTINGS = TrainSettings(encoder="conv", objective="classification", configuration="augmentation", max_epochs=3, lr=1e-3)


def test_same_seed_same_weights_and_predictions(training_data, tmp_path):
    split, preprocessed = training_data
    first = train(split, preprocessed, tmp_path / "a", SETTINGS, progress=False)
    second = train(split, preprocessed, tmp_path / "b", SETTINGS, progress=False)
    # the model files byte for byte (torch names a saved archive after its file unless given an open one)
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()
    assert first["synthetic_test_accuracy"] == second["synthetic_test_accuracy"]
    assert first["best_val_loss"] == second["best_val_loss"]
    unaugmented = TrainSettings(seed=1212, configuration="none", max_epochs=3, lr=1e-3)
    other = train(split, preprocessed, tmp_path / "c", unaugmented, progress=False)
    assert other["best_val_loss"] != first["best_val_loss"]
    assert other["synthetic_test_accuracy"] > 0.5  # it learns: chance is 0.125
    assert other["learned"] and other["validation_accuracy"] > 0.5  # so it is not marked "did not learn"
    record = json.loads((tmp_path / "a/record.json").read_text())
    assert record["settings"]["seed"] == 888 and record["device"] == "cpu" and len(record["inputs"]) == 1 + 8
    assert (tmp_path / "a/metrics.csv").read_text().splitlines()[0] == "epoch,train_loss,val_loss,train_accuracy,val_accuracy,seconds,patterns_per_s"
    assert not (tmp_path / "a/checkpoint.pt").exists()


def test_augmenting_worker_processes_do_not_change_the_model(training_data, tmp_path):
    split, preprocessed = training_data
    settings = TrainSettings(encoder="conv", objective="classification", configuration="augmentation", max_epochs=2, batch_size=64)
    train(split, preprocessed, tmp_path / "serial", settings, progress=False, workers=0)
    train(split, preprocessed, tmp_path / "workers", settings, progress=False, workers=2)
    (a, _), (b, _) = load_model(tmp_path / "serial/model.pt"), load_model(tmp_path / "workers/model.pt")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_killed_training_resumes_to_the_same_model(training_data, tmp_path):
    split, preprocessed = training_data
    settings = TrainSettings(encoder="conv", objective="prototype", configuration="none", max_epochs=6, patience=6)
    job = json.dumps({**asdict(settings)})
    command = [sys.executable, "-m", "polarmap.cli", "train", *map(str, preprocessed), "--split", str(split), "--settings", job, "--quiet"]
    reference = subprocess.run(command + ["--out-dir", str(tmp_path / "whole")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    first = subprocess.Popen(command + ["--out-dir", str(tmp_path / "cut")], stderr=subprocess.PIPE, text=True)
    while first.poll() is None and not checkpoint.exists():
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert checkpoint.exists() and not (tmp_path / "cut/model.pt").exists()
    kept = checkpoint.read_bytes()
    second = subprocess.run(command + ["--out-dir", str(tmp_path / "cut")], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "resuming after epoch" in second.stdout
    (whole, _), (resumed, _) = load_model(tmp_path / "whole/model.pt"), load_model(tmp_path / "cut/model.pt")
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k]) for k in whole.state_dict())
    assert whole.prototypes.abs().sum() > 0  # prototypes from the validation split travel with the model

    # a checkpoint truncated by a kill or a full disk, and one made on data since re-simulated,
    # are set aside with a line saying so: training starts afresh and ends as the whole run
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated/checkpoint.pt").write_bytes(kept[: len(kept) // 2])
    third = subprocess.run(command + ["--out-dir", str(tmp_path / "truncated")], capture_output=True, text=True)
    assert third.returncode == 0 and "checkpoint.pt: unreadable" in third.stdout and "training starts afresh" in third.stdout, third.stderr
    (afresh, _) = load_model(tmp_path / "truncated/model.pt")
    assert all(torch.equal(whole.state_dict()[k], afresh.state_dict()[k]) for k in whole.state_dict())
    resimulated = [tmp_path / f"resimulated_{p.name}" for p in preprocessed]
    for source, copy in zip(preprocessed, resimulated):
        copy.write_bytes(source.read_bytes())
    with h5py.File(resimulated[0], "r+") as f:
        f["patterns"][0, 0] = f["patterns"][0, 1]
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale/checkpoint.pt").write_bytes(kept)
    stale = [sys.executable, "-m", "polarmap.cli", "train", *map(str, resimulated), "--split", str(split), "--settings", job, "--quiet"]
    fourth = subprocess.run(stale + ["--out-dir", str(tmp_path / "stale")], capture_output=True, text=True)
    assert fourth.returncode == 0 and "made with other settings or data; training starts afresh" in fourth.stdout, fourth.stderr
    assert "resuming" not in fourth.stdout


def test_model_files_are_tensors_only(training_data, tmp_path):
    split, preprocessed = training_data
    train(split, preprocessed, tmp_path / "m", TrainSettings(max_epochs=1), progress=False)
    torch.load(tmp_path / "m/model.pt", weights_only=True)  # no code runs on opening
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError, match=r"broken\.pt: not a readable polarmap model"):
        load_model(tmp_path / "broken.pt")


def test_training_says_whether_it_converged_on_a_plateau_or_was_capped(training_data, tmp_path):
    """One epoch of five patience: capped, still improving. A patience of one: once it has learned,
    it stops at the first epoch without a better validation loss, long before its cap, and says it
    converged."""
    split, preprocessed = training_data
    capped = train(split, preprocessed, tmp_path / "capped", TrainSettings(configuration="none", max_epochs=1, patience=5), progress=False)
    assert capped["converged"] is False and capped["epochs_run"] == 1
    plateau = train(split, preprocessed, tmp_path / "plateau", TrainSettings(configuration="none", max_epochs=40, patience=1, lr=1e-3), progress=False)
    assert plateau["converged"] is True and plateau["epochs_run"] < 40
    history = np.genfromtxt(tmp_path / "plateau/metrics.csv", delimiter=",", names=True)
    assert history["val_loss"][-1] >= history["val_loss"][:-1].min() and plateau["best_epoch"] == plateau["epochs_run"] - 1


def test_a_model_at_chance_is_not_stopped_by_the_patience(training_data, tmp_path):
    """A model that has not learned (here it cannot: a learning rate of zero) is not on a plateau:
    a patience of one does not stop it; it runs to its cap and says it neither converged nor learned."""
    split, preprocessed = training_data
    record = train(split, preprocessed, tmp_path / "chance", TrainSettings(configuration="none", max_epochs=4, patience=1, lr=0.0), progress=False)
    assert record["epochs_run"] == 4 and record["converged"] is False and record["learned"] is False


def test_pca_knn_fits_on_the_training_part_only(training_data, tmp_path):
    from polarmap.models import PcaKnn
    from polarmap.augmentation import AugmentationSettings

    split, preprocessed = training_data
    result = train_pca_knn(split, preprocessed, tmp_path / "pk.npz", "none", 888, "corrected", 20, 5, AugmentationSettings())
    assert result["synthetic_test_accuracy"] > 0.5
    model = PcaKnn.load(tmp_path / "pk.npz")
    assert model.arrays["train_embeddings"].shape[1] == 20 and json.loads(str(model.arrays["meta"]))["mode"] == "corrected"
    leaky = train_pca_knn(split, preprocessed, tmp_path / "leaky.npz", "none", 888, "faithful", 20, 5, AugmentationSettings())
    assert not np.allclose(PcaKnn.load(tmp_path / "leaky.npz").arrays["scaler_mean"], model.arrays["scaler_mean"])
    assert leaky["configuration"] == "none"


def test_predict_any_model_and_the_faithful_decoding(training_data, tmp_path):
    from polarmap.evaluation import predict_dataset, predict_patterns
    from polarmap.predictors import com_baseline

    split, preprocessed = training_data
    ld = [p for p in preprocessed if p.name == "p_LD.h5"][0]
    for mode in ("corrected", "faithful"):
        train(split, preprocessed, tmp_path / mode, TrainSettings(objective="regression", configuration="none", mode=mode, max_epochs=4, lr=1e-3), progress=False)
    with io.open_dataset(ld) as f:
        patterns = f["patterns"][()].reshape(-1, 33, 33)
    faithful = predict_patterns(tmp_path / "faithful/model.pt", patterns)
    assert set(faithful.tolist()) <= {0, 1}  # argmax over (cos, sin): only RM or RU
    corrected = predict_patterns(tmp_path / "corrected/model.pt", patterns)
    assert (corrected == 5).mean() > 0.5  # atan2 decoding recovers LD
    result = predict_dataset("com", ld, tmp_path / "com.npz")
    with io.open_dataset(ld) as f:
        expected = com_baseline(f["beam_shift"][()])
    predictions = np.load(tmp_path / "com.npz", allow_pickle=False)["predictions"]
    assert np.array_equal(predictions, expected) and result["accuracy"] == pytest.approx((expected == 5).mean())
    result = predict_dataset(tmp_path / "corrected/model.pt", ld, tmp_path / "nn.npz")
    assert result["majority_class"] == "LD" and result["counts"]["LD"] == (corrected == 5).sum()
    assert list(com_baseline(np.array([[1.0, 0.0], [0.0, -1.0]]))) == [2, 4]  # +row is MU, -col is LM


def test_patterns_unlike_the_training_data_are_unknown(training_data, tmp_path):
    """A model's out-of-distribution threshold, calibrated on its held-out training patterns,
    keeps unseen patterns of the training distribution known and calls a dark frame, a flat
    frame, noise, a detector test image and a ring unknown; PCA+kNN too."""
    from polarmap import predictors
    from polarmap.training import calibrate_ood, load_training_data

    split, preprocessed = training_data
    train(split, preprocessed, tmp_path / "cls", TrainSettings(seed=1212, configuration="none", max_epochs=3, lr=1e-3), progress=False)
    train_pca_knn(split, preprocessed, tmp_path / "pca.npz", "none", 888, "corrected", 20, 5, AugmentationSettings())
    data = load_training_data(split, preprocessed)
    synthetic_test = data["images"][data["part"] == 2, 0]  # held out of training and of the calibration
    rng = np.random.default_rng(0)
    rows, cols = np.indices((33, 33))
    strange = np.stack([
        np.zeros((33, 33)), np.ones((33, 33)), rng.random((33, 33)),
        ((rows // 4 + cols // 4) % 2).astype(float),  # a chequerboard, as a detector's test image
        (np.abs(np.hypot(rows - 16, cols - 16) - 12) < 1.5).astype(float),  # a ring where the disc should be
    ]).astype(np.float32)
    for model, out in ((tmp_path / "cls/model.pt", tmp_path / "cls/ood.npz"), (tmp_path / "pca.npz", tmp_path / "pca_ood.npz")):
        summary = calibrate_ood(model, split, preprocessed, out)
        assert summary["held_out_patterns"] > 0 and summary["threshold"] > 0
        predict = predictors.load(model, ood_path=out).predict
        classes, _, scores, confidence = predict(synthetic_test, None)
        assert (classes >= 0).mean() >= 0.9, (model, (classes >= 0).mean())
        assert ((confidence >= 0) & (confidence <= 1)).all()  # the class probabilities' or the neighbours' agreement
        classes, _, scores, _ = predict(strange, None)
        assert (classes == -1).all(), (model, scores, summary)
    with pytest.raises(ValueError, match="not an out-of-distribution calibration"):
        predictors.load(tmp_path / "pca.npz", ood_path=tmp_path / "cls/model.pt")
