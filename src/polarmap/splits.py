"""Training splits (paper section 2.3): train / validation / test and PCA+kNN's 90/10, per
preprocessing configuration and seed; spatially blocked in `corrected` (no twin or neighbour of a
pattern across parts), stratified or the published unstratified permutation; plain arrays."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from polarmap import io
from polarmap.atomic import read_npz, save_npz_atomically
from polarmap.dataset_kind import supercell_repeats
from polarmap.preprocessing import CONFIGURATIONS


@dataclass(frozen=True)
class SplitSettings:
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, validation, test
    stratified: bool = True
    faithful_seed: int = 0  # the published split is the same for every seed
    # Spatial blocking (corrected mode): square blocks of the scan, this many pseudocubic cells on
    # a side, go whole to one part; blocks that are images of each other under the structure's
    # symmetry go to the same part; and a pattern within guard_px scan steps of a later part's
    # pattern (validation after train, test after both) is left out.
    blocked: bool = True
    block_cells: float = 0.5
    guard_px: int = 1

    def __post_init__(self):
        if problem := split_fractions_problem(self.fractions):
            raise ValueError(f"split fractions {list(self.fractions)}: {problem}")


def split_fractions_problem(fractions) -> str | None:
    """Why `fractions` cannot split a set into parts, or None where they can."""
    if abs(sum(fractions) - 1) > 1e-6:
        return f"sums to {sum(fractions):g}; the parts must sum to 1"
    if min(fractions) <= 0:
        return "every part must be positive"
    return None


def split_indices(labels: np.ndarray, settings: SplitSettings, seed: int) -> np.ndarray:
    """Assign each pattern to a part (0 = train, 1 = validation, 2 = test, ...).

    Stratified: every class is split in the given fractions, seeded by `seed`. Unstratified
    (the published code): one permutation of the pooled patterns in their stored order, with the
    same seed for every training seed."""
    labels = np.asarray(labels).ravel()
    fractions = _fractions(settings)
    parts = np.empty(labels.size, dtype=np.int8)
    if settings.stratified:
        rng = np.random.default_rng(seed)
        groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    else:
        rng = np.random.default_rng(settings.faithful_seed)
        groups = [np.arange(labels.size)]
    for members in groups:
        shuffled = rng.permutation(members)
        bounds = np.rint(np.cumsum(fractions)[:-1] * len(shuffled)).astype(int)
        for part, chunk in enumerate(np.split(shuffled, bounds)):
            parts[chunk] = part
    return parts


EXCLUDED = -1  # the part of a pattern left out of every part by the guard band


def blocked_parts(scan_shape, block_px: int, guard_px: int, symmetries_px, fractions, rng) -> np.ndarray:
    """Parts (0, 1, ... in the order of `fractions`, or EXCLUDED) of every position of one
    periodic scan (a simulated supercell scanned edge to edge, so the scan wraps around).

    Blocks of block_px x block_px positions are grouped with their images under each symmetry
    translation (twins), and whole groups are drawn into the parts. A position is then excluded
    when a position within guard_px (periodically, twins included) belongs to a later part. So two
    kept positions that are neighbours, or twins, or neighbours of twins, are in the same part."""
    n_rows, n_cols = scan_shape
    rows, cols = np.indices(scan_shape)
    block_grid = (-(-n_rows // block_px), -(-n_cols // block_px))
    block = (rows // block_px) * block_grid[1] + cols // block_px
    group = np.arange(block_grid[0] * block_grid[1])

    def root(b):
        while group[b] != b:
            group[b] = group[group[b]]
            b = group[b]
        return b

    for shift in symmetries_px:
        images = np.roll(block, (-int(shift[0]), -int(shift[1])), axis=(0, 1))
        for a, b in set(zip(block.ravel().tolist(), images.ravel().tolist())):
            group[root(a)] = root(b)
    groups = np.vectorize(root)(block)
    names, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    # the later parts (validation, test) take at least one group, then more until the next would
    # overshoot their share by more than it falls short; the first part (train) takes the rest
    targets = np.asarray(fractions, dtype=np.float64) * groups.size
    assignment = np.zeros(len(names), dtype=np.int8)
    queue = list(order)
    for part in range(len(fractions) - 1, 0, -1):
        taken = 0
        while len(queue) > 1 and (taken == 0 or abs(taken + sizes[queue[0]] - targets[part]) < abs(taken - targets[part])):
            taken += sizes[queue[0]]
            assignment[queue.pop(0)] = part
    parts = assignment[np.searchsorted(names, groups)]
    if guard_px > 0:
        from scipy.ndimage import maximum_filter

        later_nearby = maximum_filter(parts, size=2 * guard_px + 1, mode="wrap")
        parts = np.where(later_nearby > parts, EXCLUDED, parts).astype(np.int8)
    return parts


def block_px_of(attrs: dict, scan_shape, block_cells: float) -> int:
    """Scan positions along one side of a block of `block_cells` pseudocubic cells."""
    lateral_cells = supercell_repeats(attrs)[0]
    return max(1, int(round(block_cells * scan_shape[1] / lateral_cells)))


def make_split(preprocessed, out, configuration: str, seed: int, settings: SplitSettings, pca_settings: SplitSettings,
               sets_per_class: int = 1) -> dict:
    """Assign the training patterns of one preprocessing configuration to train / validation /
    test (and PCA train / test) for one seed. Only patterns kept by the filter enter when the
    configuration filters. With `sets_per_class` > 1 (thickness-diverse training: each class
    simulated that many ways) each set gives a random 1/sets_per_class of its patterns, so a
    class has as many patterns as one set alone. Written as plain arrays (.npz, no pickle)."""
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"unknown preprocessing configuration {configuration!r}; use {', '.join(CONFIGURATIONS)}")
    _, use_filter = CONFIGURATIONS[configuration]
    names, index, rows, cols, labels, blocked = [], [], [], [], [], {"part": [], "pca_part": []}
    for i, path in enumerate(map(Path, preprocessed)):
        with io.open_dataset(path) as f:
            attrs = io.read_attrs(f)
            keep = f["keep"][()] if use_filter else np.ones(f["labels"].shape, bool)
            if settings.blocked:
                for key, part_settings, stream in (("part", settings, 0), ("pca_part", pca_settings, 1)):
                    blocked[key].append(_blocked_grid(attrs, keep.shape, part_settings, np.random.default_rng([seed, i, stream]), path))
                keep &= (blocked["part"][-1] != EXCLUDED) | (blocked["pca_part"][-1] != EXCLUDED)
            r, c = np.nonzero(keep)
            if sets_per_class > 1:
                drawn = np.sort(np.random.default_rng([seed, i]).permutation(r.size)[: round(r.size / sets_per_class)])
                r, c = r[drawn], c[drawn]
            for grids in blocked.values() if settings.blocked else ():
                grids[-1] = grids[-1][r, c]
            names.append(attrs["name"])
            index.append(np.full(r.size, i, np.int16))
            rows.append(r.astype(np.int32))
            cols.append(c.astype(np.int32))
            labels.append(f["labels"][()][r, c])
    labels = np.concatenate(labels)
    if (labels < 0).any():
        raise ValueError("training sets must be labelled: found label -1")
    if settings.blocked:
        parts, pca_parts = np.concatenate(blocked["part"]), np.concatenate(blocked["pca_part"])
    else:
        parts, pca_parts = split_indices(labels, settings, seed), split_indices(labels, pca_settings, seed)
    arrays = {
        "datasets": np.array(names), "dataset_index": np.concatenate(index), "row": np.concatenate(rows),
        "col": np.concatenate(cols), "label": labels, "part": parts, "pca_part": pca_parts,
        "meta": np.array(json.dumps({"configuration": configuration, "seed": seed, "split": asdict(settings), "pca_split": asdict(pca_settings),
                                     "sets_per_class": sets_per_class})),
    }
    save_npz_atomically(out, arrays)
    return {name: int((arrays["part"] == k).sum()) for k, name in enumerate(("train", "validation", "test"))}


def _fractions(settings: SplitSettings) -> np.ndarray:
    return np.asarray(settings.fractions, dtype=np.float64)  # checked when the settings were made


def _blocked_grid(attrs: dict, scan_shape, settings: SplitSettings, rng, path) -> np.ndarray:
    if "scan_symmetries_px" not in attrs:
        raise ValueError(f"{path}: no scan_symmetries_px attribute (simulated before blocked splits); rerun its simulation")
    block_px = block_px_of(attrs, scan_shape, settings.block_cells)
    return blocked_parts(scan_shape, block_px, settings.guard_px, attrs["scan_symmetries_px"], _fractions(settings), rng)

def read_split(path) -> dict:
    """A split file's arrays; never unpickles anything."""
    arrays = read_npz(path, "split", "rerun polarmap split")
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a split (no meta); rerun polarmap split")
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays
