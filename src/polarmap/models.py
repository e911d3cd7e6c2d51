"""Encoders, heads and objectives (paper section 2.3), each registered under the name the
config uses. A model is encoder -> Linear(features, 512) + ReLU -> the objective's head.

Encoders: the custom 3-layer Conv (average pooling in `corrected`, the published max pooling in
`faithful`), VGG16 and ResNet50 from torchvision. With ImageNet weights the first convolution
is made single-channel by averaging its RGB filters (`faithful`: a new random 1-channel conv).
Feature sizes come from a dummy forward pass at the actual input size.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polarmap.atomic import read_npz, replace_atomically, save_npz_atomically
from polarmap.classes import CLASS_NAMES, angle_to_class

N_CLASSES = len(CLASS_NAMES)
ENCODERS = {}
OBJECTIVES = {}
# the tables' column labels of each registered encoder and objective
ENCODER_LABELS = {"conv": "Conv", "vgg16": "VGG", "resnet50": "ResNet"}
OBJECTIVE_LABELS = {"regression": "Reg", "classification": "Cls", "prototype": "Proto"}
# a model whose best validation accuracy stays below this (chance is 1/8) did not learn
LEARNED_MIN_VALIDATION_ACCURACY = 0.25


def register(table: dict, name: str):
    def decorate(builder):
        table[name] = builder
        return builder

    return decorate


def _feature_size(encoder: nn.Module, input_px: int) -> int:
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            size = encoder(torch.zeros(2, 1, input_px, input_px)).shape[1]
    except RuntimeError as err:
        raise ValueError(f"a {input_px}x{input_px} input is too small for this encoder ({err}); use a larger preprocessing.crop_px") from None
    encoder.train(was_training)
    return size


@register(ENCODERS, "conv")
def conv_encoder(input_px: int, pretrained: str, mode: str) -> nn.Module:
    if pretrained != "scratch":
        raise ValueError("the conv encoder has no pretrained weights: use pretrained: scratch")
    pool = nn.AvgPool2d if mode == "corrected" else nn.MaxPool2d
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(),
        nn.Conv2d(16, 32, 3), nn.ReLU(), pool(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), pool(2),
        nn.Flatten(),
    )


def _single_channel(conv: nn.Conv2d, pretrained: str, mode: str) -> nn.Conv2d:
    """A 1-channel copy of an RGB input convolution."""
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    if pretrained == "imagenet" and mode == "corrected":
        with torch.no_grad():
            new.weight.copy_(conv.weight.mean(dim=1, keepdim=True))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


def _imagenet_weights(weights_enum, pretrained: str):
    if pretrained not in ("imagenet", "scratch"):
        raise ValueError(f"pretrained must be 'imagenet' or 'scratch', got {pretrained!r}")
    return weights_enum.IMAGENET1K_V1 if pretrained == "imagenet" else None


@register(ENCODERS, "vgg16")
def vgg16_encoder(input_px: int, pretrained: str, mode: str) -> nn.Module:
    from torchvision.models import VGG16_Weights, vgg16

    net = vgg16(weights=_imagenet_weights(VGG16_Weights, pretrained))
    net.features[0] = _single_channel(net.features[0], pretrained, mode)
    return nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU())


@register(ENCODERS, "resnet50")
def resnet50_encoder(input_px: int, pretrained: str, mode: str) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    net = resnet50(weights=_imagenet_weights(ResNet50_Weights, pretrained))
    net.conv1 = _single_channel(net.conv1, pretrained, mode)
    net.fc = nn.Identity()
    return nn.Sequential(net, nn.Linear(2048, 256), nn.BatchNorm1d(256), nn.ReLU())


IMAGENET_WEIGHTS = {"vgg16": "VGG16_Weights", "resnet50": "ResNet50_Weights"}


def _imagenet_url(encoder: str) -> str:
    import torchvision.models

    if encoder not in IMAGENET_WEIGHTS:
        raise ValueError(f"no ImageNet weights for encoder {encoder!r}; available: {', '.join(IMAGENET_WEIGHTS)}")
    return getattr(torchvision.models, IMAGENET_WEIGHTS[encoder]).IMAGENET1K_V1.url


def imagenet_weights_file(encoder: str) -> str:
    """The file name torchvision gives an encoder's ImageNet weights (its SHA-256 prefix in it)."""
    return _imagenet_url(encoder).rsplit("/", 1)[1]


def fetch_imagenet_weights(encoder: str, torch_home, timeout_s: float = 20.0) -> Path:
    """Put torchvision's ImageNet weights for an encoder in TORCH_HOME/hub/checkpoints, checked
    against the SHA-256 prefix that torchvision publishes in the file name. Without network it
    fails at once, naming the file and where to place it."""
    import hashlib
    import urllib.request

    url = _imagenet_url(encoder)
    target = Path(torch_home) / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    expected = target.stem.rsplit("-", 1)[1]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(target.with_suffix(".part"), "wb") as f:
                while block := response.read(1 << 22):
                    f.write(block)
        except OSError as err:
            target.with_suffix(".part").unlink(missing_ok=True)
            raise ValueError(f"cannot download {url} ({err}); place {target.name} from there in {target.parent}") from None
        target.with_suffix(".part").replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise ValueError(f"{target}: SHA-256 {digest[:12]}... does not match the published {expected}; delete it and fetch again")
    return target


class Objective:
    """What a model outputs, how it is trained, and how outputs become classes."""

    out_features: int

    def __init__(self, mode: str = "corrected"):
        self.mode = mode

    def head(self) -> nn.Module:
        return nn.Linear(512, self.out_features)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, outputs: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def class_probabilities(self, outputs: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def angle(self, outputs: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted polarization angle (radians): the circular mean of the class angles weighted
        by the class probabilities the objective was trained with."""
        return circular_mean(self.class_probabilities(outputs, prototypes))

    def confidence(self, outputs: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """How sure the model is of the direction, 0 to 1: the length of the probability-weighted
        mean of the class directions (1: all on one class; near 0: spread round the circle)."""
        unit = class_unit_vectors(torch.arange(N_CLASSES, device=outputs.device))
        return torch.linalg.vector_norm(self.class_probabilities(outputs, prototypes).float() @ unit, dim=1)


@register(OBJECTIVES, "classification")
class Classification(Objective):
    out_features = N_CLASSES

    def loss(self, outputs, labels):
        return F.cross_entropy(outputs, labels)

    def predict(self, outputs, prototypes=None):
        return outputs.argmax(dim=1)

    def class_probabilities(self, outputs, prototypes=None):
        return F.softmax(outputs, dim=1)


def circular_mean(probabilities: torch.Tensor) -> torch.Tensor:
    """Angle of sum_k p_k (cos theta_k, sin theta_k) for class probabilities (n, 8)."""
    unit = class_unit_vectors(torch.arange(N_CLASSES, device=probabilities.device))
    vector = probabilities.float() @ unit
    return torch.atan2(vector[:, 1], vector[:, 0])


def class_unit_vectors(labels: torch.Tensor) -> torch.Tensor:
    """(cos theta_k, sin theta_k) of each label."""
    theta = labels.to(torch.float32) * (2 * math.pi / N_CLASSES)
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)


@register(OBJECTIVES, "regression")
class Regression(Objective):
    """(cos, sin) of the class angle through tanh, MSE; decoded by atan2 into 45-degree bins."""

    out_features = 2

    def head(self):
        return nn.Sequential(nn.Linear(512, 2), nn.Tanh())

    def loss(self, outputs, labels):
        return F.mse_loss(outputs, class_unit_vectors(labels))

    def predict(self, outputs, prototypes=None):
        angles = torch.atan2(outputs[:, 1], outputs[:, 0])
        return torch.as_tensor(angle_to_class(angles.detach().cpu().numpy()), device=outputs.device)

    def angle(self, outputs, prototypes=None):
        return torch.atan2(outputs[:, 1], outputs[:, 0])

    def confidence(self, outputs, prototypes=None):
        """The length of the (cos, sin) output, trained to 1 for every class (up to 1)."""
        return torch.linalg.vector_norm(outputs.float(), dim=1).clamp(max=1.0)

    def predict_external_faithfully(self, outputs):
        """The published decoding of external sets: argmax over (cos, sin), so only RM or RU."""
        return outputs.argmax(dim=1)


def circular_soft_targets(labels: torch.Tensor, sigma: float = 1.25) -> torch.Tensor:
    """Gaussian of the circular class distance min(|i - k|, 8 - |i - k|), normalised per row."""
    classes = torch.arange(N_CLASSES, device=labels.device)
    distance = (labels[:, None] - classes[None, :]).abs()
    distance = torch.minimum(distance, N_CLASSES - distance).to(torch.float32)
    weights = torch.exp(-(distance**2) / (2 * sigma**2))
    return weights / weights.sum(dim=1, keepdim=True)


@register(OBJECTIVES, "prototype")
class Prototype(Objective):
    """128-d embeddings; per-batch class-mean prototypes; log-softmax of negative Euclidean
    distances against circular soft targets (KL). `corrected` masks classes absent from the
    batch; the published code left them as zero prototypes inside the softmax."""

    out_features = 128

    def __init__(self, mode: str = "corrected", sigma: float = 1.25):
        super().__init__(mode)
        self.sigma = sigma

    def loss(self, outputs, labels):
        present = torch.zeros(N_CLASSES, dtype=torch.bool, device=outputs.device)
        present[labels] = True
        one_hot = F.one_hot(labels, N_CLASSES).to(outputs.dtype)
        counts = one_hot.sum(dim=0)
        prototypes = (one_hot.T @ outputs) / counts.clamp(min=1)[:, None]  # absent classes: zero
        logits = -torch.cdist(outputs, prototypes)
        targets = circular_soft_targets(labels, self.sigma)
        if self.mode == "corrected":
            logits = logits.masked_fill(~present[None, :], float("-inf"))
            targets = targets * present[None, :]
            targets = targets / targets.sum(dim=1, keepdim=True)
        log_probs = F.log_softmax(logits, dim=1)
        # KL(targets || probs), batch mean; absent classes (target 0) contribute nothing
        terms = torch.where(targets > 0, targets * (torch.log(targets.clamp(min=1e-12)) - log_probs), torch.zeros_like(targets))
        return terms.sum(dim=1).mean()

    def predict(self, outputs, prototypes=None):
        if prototypes is None:
            raise ValueError("prototype models need class prototypes (from the validation split) to predict")
        similarity = F.normalize(outputs, dim=1) @ F.normalize(prototypes, dim=1).T
        return similarity.argmax(dim=1)

    def class_probabilities(self, outputs, prototypes=None):
        if prototypes is None:
            raise ValueError("prototype models need class prototypes (from the validation split) to predict")
        return F.softmax(-torch.cdist(outputs.float(), prototypes.float()), dim=1)  # as in the training loss


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean embedding of each class (zero for a class without examples)."""
    one_hot = F.one_hot(labels, N_CLASSES).to(embeddings.dtype)
    return (one_hot.T @ embeddings) / one_hot.sum(dim=0).clamp(min=1)[:, None]


class PolarizationModel(nn.Module):
    def __init__(self, encoder: str, objective: str, input_px: int, pretrained: str = "scratch", mode: str = "corrected"):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; registered: {', '.join(ENCODERS)}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; registered: {', '.join(OBJECTIVES)}")
        self.objective = OBJECTIVES[objective](mode)
        self.encoder = ENCODERS[encoder](input_px, pretrained, mode)
        self.neck = nn.Sequential(nn.Linear(_feature_size(self.encoder, input_px), 512), nn.ReLU())
        self.head = self.objective.head()
        self.register_buffer("prototypes", torch.zeros(N_CLASSES, 128) if objective == "prototype" else torch.zeros(0))
        # per-pixel input standardisation, set from the training split (identity by default)
        self.register_buffer("input_mean", torch.zeros(1, 1, input_px, input_px))
        self.register_buffer("input_std", torch.ones(1, 1, input_px, input_px))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (512 values per pattern): what the out-of-distribution score measures."""
        return self.neck(self.encoder((images - self.input_mean) / self.input_std))

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.objective.predict(outputs, self.prototypes if self.prototypes.numel() else None)

    def angle(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.objective.angle(outputs, self.prototypes if self.prototypes.numel() else None)

    def confidence(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.objective.confidence(outputs, self.prototypes if self.prototypes.numel() else None)


class PcaKnn:
    """StandardScaler -> PCA -> kNN, held as plain arrays (fitted with scikit-learn, saved and
    applied without pickle). Ties in the kNN vote go to the smallest class, as scikit-learn does."""

    def __init__(self, arrays: dict):
        self.arrays = arrays

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, components: int, neighbors: int, fit_features: np.ndarray | None = None):
        """Fit on `features` (n, d); the scaler and PCA may be fitted on other rows
        (`fit_features`, the published code's leakage of the test split)."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        basis = features if fit_features is None else fit_features
        scaler = StandardScaler().fit(basis)
        pca = PCA(n_components=components, svd_solver="full").fit(scaler.transform(basis))
        arrays = {
            "scaler_mean": scaler.mean_, "scaler_scale": scaler.scale_, "pca_mean": pca.mean_,
            "pca_components": pca.components_, "explained_variance_ratio": pca.explained_variance_ratio_,
            "train_labels": labels.astype(np.int64), "neighbors": np.array(neighbors),
        }
        model = cls(arrays)
        arrays["train_embeddings"] = model.embed(features)
        return model

    def embed(self, features: np.ndarray) -> np.ndarray:
        a = self.arrays
        return ((features - a["scaler_mean"]) / a["scaler_scale"] - a["pca_mean"]) @ a["pca_components"].T

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.votes(features).argmax(axis=1)

    def votes(self, features: np.ndarray, chunk: int = 512) -> np.ndarray:
        """The neighbours' votes (n, classes) of each pattern."""
        a = self.arrays
        reference, k = a["train_embeddings"], int(a["neighbors"])
        votes = []
        for start in range(0, len(features), chunk):
            z = self.embed(features[start:start + chunk])
            distances = (z**2).sum(1)[:, None] - 2 * z @ reference.T + (reference**2).sum(1)[None, :]
            nearest = self._nearest(distances, k)
            votes.append((a["train_labels"][nearest][:, :, None] == np.arange(N_CLASSES)).sum(axis=1))
        return np.concatenate(votes) if votes else np.zeros((0, N_CLASSES), np.int64)

    @staticmethod
    def _nearest(distances: np.ndarray, k: int) -> np.ndarray:
        """Indices of the k smallest distances per row, ties in index order (as a stable full
        sort gives, which scikit-learn matches), by partitioning: ~10x faster on 40000 references."""
        candidates = np.argpartition(distances, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(distances, candidates, axis=1).max(axis=1)
        nearest = np.sort(candidates, axis=1)
        order = np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1, kind="stable")
        nearest = np.take_along_axis(nearest, order, axis=1)
        tied = (distances <= kth[:, None]).sum(axis=1) > k  # a tie at the k-th distance: the full stable sort decides
        if tied.any():
            nearest[tied] = np.argsort(distances[tied], axis=1, kind="stable")[:, :k]
        return nearest

    def save(self, path) -> None:
        save_npz_atomically(path, self.arrays)

    @classmethod
    def load(cls, path):
        arrays = read_npz(path, "PCA+kNN model", "refit it (polarmap train-pca-knn)")
        if "scaler_mean" not in arrays:
            raise ValueError(f"{path}: not a PCA+kNN model (no scaler_mean); refit it (polarmap train-pca-knn)")
        if not all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f"):
            raise ValueError(f"{path}: its PCA+kNN arrays hold NaN or infinite values; refit it (polarmap train-pca-knn)")
        return cls(arrays)


def save_model_file(path, payload: dict) -> None:
    """torch.save of tensors and plain values, whole or not at all, and the same bytes for the same
    payload: written through an open file, whose archive torch names "archive" (given a path it
    names the archive after the file: here a random temporary name, and the bytes would differ)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    replace_atomically(path, write)


def refuse_non_finite(model: torch.nn.Module, path) -> None:
    """A model with a NaN or infinite weight answers one class for everything: refused."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: weight {name} holds NaN or infinite values (training diverged or the file is damaged); retrain it")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def flush_subnormals() -> None:
    """Compute with numbers below float32's normal range as zero, in this process. Weight decay on
    a network that is not learning drives its weights there (the faithful-mode Conv at chance: 60 %
    of its weights after 30 epochs), where a CPU runs some 10x slower (an epoch of 6,500 patterns
    3 s -> 35 s); below 1.2e-38 they change outputs negligibly. Per thread: called before any
    parallel work, so that the threads torch then starts inherit it."""
    torch.set_flush_denormal(True)


def load_model(path) -> tuple[PolarizationModel, dict]:
    """A trained model from model.pt and its training settings; the file holds tensors and
    plain values only."""
    flush_subnormals()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model; train it first") from None
    except Exception as err:  # torch raises many types for damaged files
        raise ValueError(f"{path}: not a readable polarmap model ({str(err).splitlines()[0]}); retrain it") from None
    expected = {"settings", "input_px", "state_dict"}
    if not isinstance(saved, dict) or not expected <= saved.keys():
        held = f"keys {sorted(saved)}" if isinstance(saved, dict) else f"a {type(saved).__name__}"
        raise ValueError(f"{path}: not a polarmap model (it holds {held}); use a model.pt written by `polarmap train`")
    try:
        settings = json.loads(saved["settings"])
        settings["sampling"] = json.loads(saved.get("sampling", "null"))  # None: trained before models recorded it
        model = PolarizationModel(settings["encoder"], settings["objective"], int(saved["input_px"]), "scratch", settings["mode"])
        model.load_state_dict(saved["state_dict"])
    except (TypeError, KeyError, ValueError, RuntimeError) as err:  # missing or foreign weights, unknown settings
        reason = f"no {err}" if isinstance(err, KeyError) else " ".join(str(err).split())[:200]
        raise ValueError(f"{path}: not a polarmap model ({reason}); use a model.pt written by `polarmap train`") from None
    refuse_non_finite(model, path)
    return model.eval(), settings
