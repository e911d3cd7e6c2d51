"""What kind of data a data set holds, read in one place from its metadata (a leaf module).

A simulated set records its supercell as "AxBxC" unit cells; an experiment-like set (a simulation
through a detector model, `polarmap experiment-like`) keeps that supercell and is marked
`experiment_like`; detector data (`polarmap import`, `polarmap map`) has no supercell: it is
written as "experimental" (the data set format's value, kept for the files already written).
"""

from enum import Enum

DETECTOR_SUPERCELL = "experimental"


class DatasetKind(Enum):
    SIMULATED = "simulated"
    EXPERIMENT_LIKE = "experiment-like"  # a simulation through a detector model: its lattice known
    DETECTOR = "detector"  # a real acquisition: its lattice found in the data, if at all

    @property
    def through_a_detector(self) -> bool:
        """Its patterns carry a detector's effects (descan, noise, a disc off the centre pixel)."""
        return self is not DatasetKind.SIMULATED


def dataset_kind(attrs: dict) -> DatasetKind:
    if str(attrs.get("supercell", "")) == DETECTOR_SUPERCELL:
        return DatasetKind.DETECTOR
    return DatasetKind.EXPERIMENT_LIKE if bool(attrs.get("experiment_like", False)) else DatasetKind.SIMULATED


def supercell_repeats(attrs: dict) -> tuple[int, int, int] | None:
    """The simulated supercell's unit cells along a, b, c; None for detector data."""
    repeats = str(attrs.get("supercell", "")).split("x")
    if len(repeats) != 3 or not all(r.isdigit() for r in repeats):
        return None
    return int(repeats[0]), int(repeats[1]), int(repeats[2])
