"""Is a pattern like anything the model trained on? An out-of-distribution score with a threshold
calibrated on held-out training patterns; beyond it the answer is "unknown" (issue 15). A leaf
module: features in, scores out, no files.

The score is the Mahalanobis distance of a pattern's features (a network's penultimate layer, or
PCA+kNN's embedding) to the nearest class mean, under one covariance shared by the classes and
fitted on the training part (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples"). The threshold is a quantile of the scores of the validation part:
patterns held out from training, so that a pattern of the training distribution passes at that
rate, not at the rate memorised patterns would."""

import numpy as np

from polarmap.classes import CLASS_NAMES

# the share of held-out training patterns that must stay known; the rest set the threshold
KNOWN_QUANTILE = 0.99
# covariance shrinkage towards its mean variance: 512 features from a few thousand patterns
SHRINKAGE = 0.1


def fit_ood(train_features: np.ndarray, train_labels: np.ndarray, validation_features: np.ndarray,
            quantile: float = KNOWN_QUANTILE) -> dict[str, np.ndarray]:
    """Class means, the shared precision matrix and the threshold, as arrays."""
    train_features = np.asarray(train_features, dtype=np.float64)
    if len(train_features) < 2 or len(validation_features) < 1:
        raise ValueError("out-of-distribution calibration needs training and held-out patterns")
    present = np.unique(train_labels)
    means = np.full((len(CLASS_NAMES), train_features.shape[1]), np.nan)
    for k in present:
        means[k] = train_features[train_labels == k].mean(axis=0)
    centred = train_features - means[train_labels]
    covariance = centred.T @ centred / len(centred)
    # shrunk towards its mean variance; a floor keeps dead features (all zero) from making it singular
    ridge = SHRINKAGE * np.trace(covariance) / len(covariance) + 1e-12
    covariance = (1 - SHRINKAGE) * covariance + ridge * np.eye(len(covariance))
    arrays = {"class_means": means, "precision": np.linalg.inv(covariance), "quantile": np.array(quantile)}
    scores = ood_scores(validation_features, arrays)
    arrays["threshold"] = np.array(np.quantile(scores, quantile))
    arrays["validation_scores"] = scores
    return arrays


def ood_scores(features: np.ndarray, arrays: dict) -> np.ndarray:
    """The Mahalanobis distance of each pattern's features to the nearest class mean."""
    whiten = np.linalg.cholesky(arrays["precision"])  # precision = L L^T: the distance is Euclidean after L
    z = np.asarray(features, dtype=np.float64) @ whiten
    means = arrays["class_means"][np.isfinite(arrays["class_means"]).all(axis=1)] @ whiten
    squared = (z**2).sum(axis=1)[:, None] - 2 * z @ means.T + (means**2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0))
