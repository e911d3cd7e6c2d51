"""The 8 projected polarization classes of the study.

Class k has angle theta_k = 45 k degrees, counter-clockwise from +col (right) with +row as
"up" on the detector and on the scan grid (study-notes: MU has a positive row offset).
"""

import numpy as np

CLASS_NAMES = ("RM", "RU", "MU", "LU", "LM", "LD", "MD", "RD")
CLASS_ANGLES_DEG = tuple(45.0 * k for k in range(len(CLASS_NAMES)))
UNKNOWN_LABEL = -1


def class_index(name: str) -> int:
    """Index of a class name; a clear error for anything else."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown polarization class {name!r}: use one of {', '.join(CLASS_NAMES)}"
        ) from None


def class_direction(name: str) -> np.ndarray:
    """Unit vector (col, row) of a class's in-plane direction ("up" = +row)."""
    theta = np.deg2rad(CLASS_ANGLES_DEG[class_index(name)])
    return np.array([np.cos(theta), np.sin(theta)])


def angle_to_class(angle_rad) -> np.ndarray:
    """Bin angles (radians, counter-clockwise from +col) into the 8 classes, 45 degrees each,
    each bin centred on its class angle."""
    shifted = np.mod(np.asarray(angle_rad) + np.pi / 8, 2 * np.pi)
    return (shifted // (np.pi / 4)).astype(np.int64) % len(CLASS_NAMES)


def class_votes(predictions) -> np.ndarray:
    """How many of the predictions fell in each class (unknown, -1, left out)."""
    predictions = np.ravel(predictions)
    return np.bincount(predictions[predictions >= 0], minlength=len(CLASS_NAMES))


def majority_class(votes) -> np.ndarray:
    """The study's one majority vote: the class with the most votes along the last axis of
    `votes` (counts per class), ties to the lowest class index, UNKNOWN_LABEL where none voted."""
    votes = np.asarray(votes)
    return np.where(votes.sum(axis=-1) > 0, votes.argmax(axis=-1), UNKNOWN_LABEL)
