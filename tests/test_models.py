import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polarmap.classes import CLASS_ANGLES_DEG
from polarmap.models import (
    ENCODERS, OBJECTIVES, PcaKnn, PolarizationModel, Prototype, Regression, circular_soft_targets, class_prototypes,
    fetch_imagenet_weights, load_model,
)

ROOT = Path(__file__).resolve().parents[1]


def separable_batch(n=64, px=32, seed=0):
    """Toy patterns whose class is written as a bright bar position: trivially separable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, n)
    images = rng.random((n, 1, px, px), dtype=np.float32) * 0.1
    for i, k in enumerate(labels):
        images[i, 0, 4 * k:4 * k + 4, :] = 1.0
    return torch.from_numpy(images), torch.from_numpy(labels)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_training_steps_reduce_the_loss(encoder, objective):
    torch.manual_seed(0)
    model = PolarizationModel(encoder, objective, 32)
    x, y = separable_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        loss = model.objective.loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_feature_size_follows_the_input_and_pooling_follows_the_mode():
    assert PolarizationModel("conv", "classification", 64).neck[0].in_features == 64 * 14 * 14
    assert PolarizationModel("conv", "classification", 32).neck[0].in_features == 64 * 6 * 6
    corrected, faithful = ENCODERS["conv"](64, "scratch", "corrected"), ENCODERS["conv"](64, "scratch", "faithful")
    assert isinstance(corrected[4], torch.nn.AvgPool2d) and isinstance(faithful[4], torch.nn.MaxPool2d)
    with pytest.raises(ValueError, match="too small for this encoder"):
        PolarizationModel("vgg16", "classification", 16)


def test_a_model_computes_with_weights_below_the_normal_range_as_zero(tmp_path):
    """Weight decay leaves a network that does not learn with most weights below float32's normal
    range, where a CPU is some 10x slower: loading a model (as training does) makes this process
    compute with such numbers as zero."""
    from test_bad_input import save_model

    torch.set_flush_denormal(False)
    try:
        subnormal = torch.tensor([1e-40])
        assert (subnormal * 1.5).item() != 0
        save_model(tmp_path / "model.pt")
        load_model(tmp_path / "model.pt")
        assert (subnormal * 1.5).item() == 0 and (torch.tensor([1e-30]) * 1.5).item() == pytest.approx(1.5e-30)
    finally:
        torch.set_flush_denormal(False)


def test_regression_decoding_at_class_angles_and_bin_edges():
    regression = Regression()
    angles = torch.deg2rad(torch.tensor(CLASS_ANGLES_DEG))
    outputs = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    assert regression.predict(outputs).tolist() == list(range(8))
    below = angles + math.radians(22.4)
    above = angles + math.radians(22.6)
    assert regression.predict(torch.stack([torch.cos(below), torch.sin(below)], 1)).tolist() == list(range(8))
    assert regression.predict(torch.stack([torch.cos(above), torch.sin(above)], 1)).tolist() == [1, 2, 3, 4, 5, 6, 7, 0]
    # the published decoding of external sets is an argmax over (cos, sin): RU (1) wherever the
    # sine is the larger, RM (0) elsewhere, whatever the direction
    off_bin = angles + math.radians(10)
    published = regression.predict_external_faithfully(torch.stack([torch.cos(off_bin), torch.sin(off_bin)], 1))
    assert published.tolist() == [0, 1, 1, 1, 1, 0, 0, 0]


def test_circular_soft_targets_by_hand():
    targets = circular_soft_targets(torch.tensor([0]))[0]
    distance = torch.tensor([0, 1, 2, 3, 4, 3, 2, 1], dtype=torch.float32)
    expected = torch.exp(-(distance**2) / (2 * 1.25**2))
    assert torch.allclose(targets, expected / expected.sum())
    assert targets[1] == targets[7] and targets.argmax() == 0


def test_prototype_loss_by_hand_and_absent_class_masking():
    outputs = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1])
    # prototypes equal the points; classes 2-7 are absent from the batch
    distances = torch.cdist(outputs, torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    targets = circular_soft_targets(labels)[:, :2]
    targets = targets / targets.sum(1, keepdim=True)
    log_probs = torch.log_softmax(-distances, 1)
    expected = (targets * (targets.log() - log_probs)).sum(1).mean()
    assert Prototype("corrected").loss(outputs, labels) == pytest.approx(float(expected), rel=1e-5)
    # the published code: absent classes stay in the softmax as zero prototypes
    faithful = Prototype("faithful").loss(outputs, labels)
    assert float(faithful) != pytest.approx(float(expected), rel=1e-3)


def test_prototype_inference_by_cosine_similarity():
    embeddings = torch.eye(8, 128) * 3
    prototypes = class_prototypes(embeddings, torch.arange(8))
    queries = torch.eye(8, 128)[[3, 5]] * 0.1
    assert Prototype().predict(queries, prototypes).tolist() == [3, 5]
    with pytest.raises(ValueError, match="need class prototypes"):
        Prototype().predict(queries)


def test_pca_knn_arrays_predict_like_scikit_learn(tmp_path):
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, 400)
    features = rng.normal(size=(400, 50)) + labels[:, None] * np.linspace(0, 1, 50)
    model = PcaKnn.fit(features[:300], labels[:300], components=20, neighbors=5)
    model.save(tmp_path / "pk.npz")
    reference = make_pipeline(StandardScaler(), PCA(20, svd_solver="full"), KNeighborsClassifier(5)).fit(features[:300], labels[:300])
    assert np.array_equal(PcaKnn.load(tmp_path / "pk.npz").predict(features[300:]), reference.predict(features[300:]))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: not a readable PCA\+kNN model"):
        PcaKnn.load(tmp_path / "bad.npz")


def test_imagenet_weights_load_from_torch_home_and_first_conv_is_averaged(tmp_path, monkeypatch):
    """The real loading path (torchvision -> TORCH_HOME cache) with a stand-in weight file."""
    from torchvision.models import resnet50

    stand_in = resnet50(weights=None).state_dict()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(stand_in, checkpoints / "resnet50-0676ba61.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    corrected = ENCODERS["resnet50"](64, "imagenet", "corrected")
    first_conv = corrected[0].conv1.weight
    assert torch.allclose(first_conv, stand_in["conv1.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(corrected[0].layer1[0].conv1.weight, stand_in["layer1.0.conv1.weight"])
    faithful = ENCODERS["resnet50"](64, "imagenet", "faithful")
    assert not torch.allclose(faithful[0].conv1.weight, first_conv)
    # the stand-in is not the published file: the checksum refuses it
    with pytest.raises(ValueError, match="does not match the published 0676ba61"):
        fetch_imagenet_weights("resnet50", tmp_path)


def test_workflow_names_the_files_torchvision_uses():
    """The ImageNet weight files the workflow fetches and trains from are named from the encoder
    registry as torchvision publishes them (the SHA-256 prefix in the name is checked on fetch)."""
    from polarmap.models import imagenet_weights_file

    assert imagenet_weights_file("vgg16") == "vgg16-397923af.pth" and imagenet_weights_file("resnet50") == "resnet50-0676ba61.pth"
    assert "imagenet_weights_file(job['encoder'])" in (ROOT / "workflow/rules/common.smk").read_text()
    with pytest.raises(ValueError, match="no ImageNet weights for encoder 'conv'"):
        imagenet_weights_file("conv")