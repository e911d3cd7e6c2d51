"""The defect study's score: where a class map departs from its majority, against where the
vacancy is (paper section 3.3)."""

import numpy as np

from polarmap.classes import class_votes, majority_class

def disagreement_score(classes: np.ndarray, window: int = 3) -> np.ndarray:
    """Per scan position, the fraction of the positions in a window x window neighbourhood whose
    class differs from the map's majority class (an unknown pattern differs): high where the map
    departs from its domain."""
    from scipy.ndimage import uniform_filter

    majority = majority_class(class_votes(classes))
    return uniform_filter((classes != majority).astype(np.float64), size=window, mode="nearest")


def localisation_auc(classes: np.ndarray, defect_mask: np.ndarray, window: int = 3) -> float:
    """ROC AUC of the disagreement score against the defect mask: 1 means the misclassified
    region is exactly around the vacancy, 0.5 means it says nothing about where it is."""
    from sklearn.metrics import roc_auc_score

    mask = np.asarray(defect_mask, bool)
    if mask.all() or not mask.any():
        raise ValueError("the defect mask must mark some scan positions and not all of them")
    return float(roc_auc_score(mask.ravel(), disagreement_score(classes, window).ravel()))
