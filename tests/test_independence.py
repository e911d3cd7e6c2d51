"""Independent data: every simulated set its own crystal, splits without twins or neighbours
across parts, and the leakage audit that checks both (issue 14)."""

import shutil

import numpy as np
import pytest

from polarmap import config as study_config
from polarmap.audit import NEAR_RMS, audit_sets, audit_split, content_hash
from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
from polarmap.splits import EXCLUDED, SplitSettings, blocked_parts, make_split
from polarmap.simulation import simulate
from polarmap.structures import build_supercell


def _neighbour_and_twin_offsets(guard_px, symmetries):
    window = [(dr, dc) for dr in range(-guard_px, guard_px + 1) for dc in range(-guard_px, guard_px + 1)]
    return window + [(int(r) + dr, int(c) + dc) for r, c in symmetries for dr, dc in window]


@pytest.mark.parametrize("case", range(60))
def test_blocked_split_never_puts_twins_or_neighbours_on_two_sides(case):
    rng = np.random.default_rng(case)
    cells = int(rng.integers(1, 5))
    px_per_cell = int(rng.integers(2, 17))
    shape = (cells * px_per_cell, cells * px_per_cell)
    block_px = int(rng.integers(1, px_per_cell + 1))
    guard_px = int(rng.integers(0, 3))
    # the ordered A sites' diagonal translation, a lateral one, or none
    symmetries = [[k * px_per_cell, k * px_per_cell] for k in range(1, cells)] if case % 3 == 0 else (
        [[0, px_per_cell]] if case % 3 == 1 and cells > 1 else [])
    parts = blocked_parts(shape, block_px, guard_px, symmetries, (0.8, 0.1, 0.1), rng)
    for shift in symmetries:  # twins share their part, including "left out"
        assert np.array_equal(parts, np.roll(parts, (-shift[0], -shift[1]), axis=(0, 1)))
    if guard_px == 0:
        return
    kept = parts != EXCLUDED
    for dr, dc in _neighbour_and_twin_offsets(guard_px, symmetries):
        other = np.roll(parts, (-dr, -dc), axis=(0, 1))  # the part of the position (r + dr, c + dc), periodically
        both = kept & (other != EXCLUDED)
        assert np.array_equal(parts[both], other[both]), (case, dr, dc)


def test_blocked_split_at_the_default_geometry_fills_every_part():
    """32x32 scan over 2x2 cells, half-cell blocks: 2 blocks of 64 to test, 2 to validation (less
    what touches test), the rest training less the guard rings."""
    parts = blocked_parts((32, 32), 8, 1, [], (0.8, 0.1, 0.1), np.random.default_rng(888))
    counts = {k: int((parts == k).sum()) for k in (EXCLUDED, 0, 1, 2)}
    assert counts[2] == 128 and 128 - 2 * 8 <= counts[1] <= 128 and sum(counts.values()) == 1024
    assert counts[EXCLUDED] <= 2 * 2 * (10 * 10 - 8 * 8)  # the guard ring of the four blocks at most
    assert counts[0] >= 1024 - 4 * 64 - 4 * 36
    assert np.array_equal(parts, blocked_parts((32, 32), 8, 1, [], (0.8, 0.1, 0.1), np.random.default_rng(888)))
    assert not np.array_equal(parts, blocked_parts((32, 32), 8, 1, [], (0.8, 0.1, 0.1), np.random.default_rng(1212)))


def small_config(mode):
    config = {
        "mode": mode,
        "simulation": {"gpts_per_cell": 32, "scan_px": 8, "rows_per_block": 8},
        "datasets": {"training": {"supercell": [2, 2, 25], "classes": ["RM"]},
                     "tests": {"1S": {"polarization": "RM", "supercell": [4, 4, 25]}, "3S": {"polarization": "RM", "supercell": [2, 2, 25]}}},
    }
    return study_config.validate_config(config)


def test_every_set_is_its_own_crystal_in_corrected_mode_and_a_copy_in_faithful():
    corrected, faithful = small_config("corrected"), small_config("faithful")
    train, test = (study_config.dataset_job_settings(corrected, name) for name in ("train_RM", "3S"))
    assert train["structure"]["a_site_order"] == "random" and train["simulation"]["frozen_phonon_configs"] == 2
    assert train["structure"]["a_site_seed"] != test["structure"]["a_site_seed"]
    assert train["simulation"]["frozen_phonon_seed"] != test["simulation"]["frozen_phonon_seed"]
    assert train["simulation"]["scan_origin_steps"] != test["simulation"]["scan_origin_steps"]
    assert all(0 <= v < 1 for v in test["simulation"]["scan_origin_steps"])
    assert study_config.dataset_job_settings(corrected, "3S") == test  # the name fixes the crystal
    published = study_config.dataset_job_settings(faithful, "3S")
    assert published["structure"]["a_site_order"] == "ordered" and published["simulation"]["frozen_phonon_configs"] == 0
    assert published["simulation"]["scan_origin_steps"] == [0.0, 0.0]


def _make(config, name, folder):
    job = study_config.dataset_job_settings(config, name)
    dataset = job["dataset"]
    atoms = build_supercell(tuple(dataset["supercell"]), dataset["polarization"], study_config.structure_settings(job))
    raw, preprocessed = folder / f"{name}.h5", folder / f"{name}_pre.h5"
    simulate(atoms, raw, name, study_config.simulation_settings(job), tuple(dataset["classes"]), job, progress=False)
    preprocess_dataset(raw, preprocessed, PreprocessSettings(crop_px=33), name.startswith("train_"), progress=False)
    return raw, preprocessed


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("independence")
    sets = {}
    for mode in ("corrected", "faithful"):
        (folder / mode).mkdir()
        for name in ("train_RM", "3S", "1S"):
            sets[mode, name] = _make(small_config(mode), name, folder / mode)
    (folder / "again").mkdir()
    sets["again"] = _make(small_config("corrected"), "train_RM", folder / "again")
    return folder, sets


def test_same_seed_reproduces_a_set_bit_for_bit_and_other_seeds_differ(simulated):
    _, sets = simulated
    assert content_hash(sets["again"][0]) == content_hash(sets["corrected", "train_RM"][0])
    rows = audit_sets([sets["corrected", "train_RM"]], [(*sets["corrected", name], "test") for name in ("3S", "1S")])
    for row in rows:
        assert row["independent"] and row["near_copies"] == 0 and row["median_rms"] > 2 * NEAR_RMS, row


def test_audit_finds_the_published_copy_and_tiling(simulated, tmp_path):
    _, sets = simulated
    raw, preprocessed = sets["faithful", "train_RM"]
    shutil.copy(raw, tmp_path / "copy.h5")
    rows = {row["set"]: row for row in audit_sets([(raw, preprocessed)], [(*sets["faithful", "3S"], "test"), (*sets["faithful", "1S"], "test")])}
    assert not rows["3S"]["independent"] and rows["3S"]["exact_copies"] == 1.0  # the same crystal, the same scan
    assert not rows["1S"]["independent"] and rows["1S"]["exact_copies"] == 1.0  # the 2x2 cell tiled, every second position
    copied = audit_sets([(raw, preprocessed)], [(tmp_path / "copy.h5", sets["faithful", "3S"][1], "test")])[0]
    assert copied["same_content_as"] == "train_RM" and not copied["independent"]


def test_audit_finds_twins_across_a_random_split_and_none_across_a_blocked_one(simulated, tmp_path):
    _, sets = simulated
    preprocessed = [sets["faithful", "train_RM"][1]]  # ordered A sites: (r, c) and (r + 4, c + 4) are twins
    random_split, blocked_split = tmp_path / "random.npz", tmp_path / "blocked.npz"
    make_split(preprocessed, random_split, "none", 888, SplitSettings(blocked=False), SplitSettings(fractions=(0.9, 0.1), blocked=False))
    make_split(preprocessed, blocked_split, "none", 888, SplitSettings(block_cells=1.0, guard_px=0), SplitSettings(fractions=(0.9, 0.1)))
    for leaky in audit_split(random_split, preprocessed):  # the models' split and PCA+kNN's
        assert leaky["exact_copies"] > 0.5 and not leaky["independent"], leaky["set"]
    for clean in audit_split(blocked_split, preprocessed):
        assert clean["exact_copies"] == 0 and clean["sampled"] > 0, clean["set"]


def test_scan_origin_moves_every_probe_position_by_that_many_steps(tmp_path):
    """An origin of one whole step along the rows is the same scan rolled by one row (the scan
    wraps around the periodic supercell); half a step is neither."""
    from dataclasses import replace

    from polarmap import io
    from polarmap.simulation import SimulationSettings

    atoms = build_supercell((2, 2, 4), "RU")
    settings = SimulationSettings(gpts_per_cell=16, scan_px=4, rows_per_block=4)
    grids = {}
    for origin in ((0.0, 0.0), (1.0, 0.0), (0.5, 0.0)):
        path = tmp_path / f"{origin[0]}.h5"
        simulate(atoms, path, "s", replace(settings, scan_origin_steps=origin), ("RU",), progress=False)
        with io.open_dataset(path) as f:
            grids[origin] = f["patterns"][()]
            recorded = io.read_attrs(f)["scan_origin_angstrom"]
        assert recorded == pytest.approx([origin[0] * 2 * atoms.info["a_pc_angstrom"] / 4, 0.0])
    assert np.allclose(grids[1.0, 0.0], np.roll(grids[0.0, 0.0], -1, axis=0), rtol=0, atol=1e-5 * grids[0.0, 0.0].max())
    assert not np.allclose(grids[0.5, 0.0], grids[0.0, 0.0], rtol=0, atol=1e-3 * grids[0.0, 0.0].max())


def test_two_runs_of_one_set_are_bit_identical(tmp_path):
    """Two processes simulating one set of one config write the same patterns, byte for byte
    (abTEM's default FFTW_MEASURE planning made them differ by ~2e-6)."""
    import subprocess
    import sys

    import yaml

    config = {"simulation": {"gpts_per_cell": 16, "scan_px": 4, "rows_per_block": 4}, "preprocessing": {"crop_px": 16},
              "datasets": {"training": {"supercell": [2, 2, 4], "classes": ["LD"]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    hashes = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.h5"
        subprocess.run([sys.executable, "-m", "polarmap.cli", "simulate", "--config", str(tmp_path / "config.yaml"), "--dataset", "train_LD",
                        "--out", str(out), "--quiet"], check=True, capture_output=True)
        hashes.append(content_hash(out))
    assert hashes[0] == hashes[1]
