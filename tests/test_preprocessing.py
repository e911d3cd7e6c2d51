import h5py
import numpy as np
import pytest

from polarmap import blocks, io
from polarmap.classes import CLASS_NAMES, class_direction
from polarmap.augmentation import AugmentationSettings, augmentation_pipeline
from polarmap.preprocessing import PreprocessSettings, crop_origin, preprocess_dataset
from polarmap.seeds import derived_seed
from polarmap.splits import SplitSettings, split_indices
from polarmap.pattern import center_of_mass
from test_io import attrs


def disc(size=64, radius=7.6, centre=None, oversample=4):
    """An anti-aliased uniform disc (the bright-field disc) at a sub-pixel centre (row, col)."""
    centre = np.array(centre if centre is not None else (size // 2, size // 2), dtype=float)
    fine = (np.arange(size * oversample) + 0.5) / oversample - 0.5
    rows, cols = np.meshgrid(fine, fine, indexing="ij")
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    return inside.reshape(size, oversample, size, oversample).mean(axis=(1, 3)).astype(np.float32)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_com_of_a_shifted_disc_follows_the_class_direction(name):
    d_col, d_row = 1.5 * class_direction(name)  # "up" = +row
    com = center_of_mass(disc(centre=(32 + d_row, 32 + d_col)))
    assert com == pytest.approx([32 + d_row, 32 + d_col], abs=0.02)


def write_descanned_set(path, descan, shifts, supercell="experimental", size=96):
    """A scan of discs displaced by a descan (a constant (row, col), or a plane per position)
    plus per-pattern shifts (row, col)."""
    descan = np.broadcast_to(np.asarray(descan, dtype=float), shifts.shape)
    patterns = np.stack([[disc(size, centre=size // 2 + d + s) for d, s in zip(d_row, s_row)] for d_row, s_row in zip(descan, shifts)])
    io.write_dataset(path, patterns, np.zeros(patterns.shape[:2], np.int8), attrs(supercell=supercell))
    return patterns


SHIFTS = np.array([[[0.5, 0], [-0.5, 0], [0, 0.5], [0, -0.5]], [[1.0, 0], [-1.0, 0], [0, 1.0], [0, -1.0]]])


def plane_free(shifts):
    """Shifts with their least-squares plane over the scan taken out (what a descan plane cannot absorb)."""
    rows, cols = np.indices(shifts.shape[:2])
    design = np.stack([np.ones(rows.size), rows.ravel(), cols.ravel()], axis=1)
    flat = shifts.reshape(-1, 2)
    return (flat - design @ np.linalg.lstsq(design, flat, rcond=None)[0]).reshape(shifts.shape)


def test_corrected_crop_follows_the_descan_plane_at_sub_pixel_precision(tmp_path):
    """A 6x6 scan whose disc drifts as a plane (5 px + 0.3 px per scan row, -7 px - 0.2 px per scan
    column) and moves by its own shift at each position: the plane is the descan, the rest the beam
    shift, to 0.02 px; the crop is centred on the plane at sub-pixel precision."""
    rng = np.random.default_rng(3)
    shifts = plane_free(rng.choice([-1.0, -0.5, 0.5, 1.0], size=(6, 6, 2)))
    rows, cols = np.indices((6, 6))
    descan = np.stack([5 + 0.3 * rows, -7 - 0.2 * cols], axis=-1)
    write_descanned_set(tmp_path / "d.h5", descan, shifts)
    summary = preprocess_dataset(tmp_path / "d.h5", tmp_path / "p.h5", PreprocessSettings(crop_px=33, rotation_deg=0, flip=False),
                                 is_training=True, progress=False)
    with io.open_dataset(tmp_path / "p.h5") as f:
        meta = io.read_attrs(f)
        cropped, shift = f["patterns"][()], f["beam_shift"][()]
        magnitude, keep = f["beam_shift_magnitude"][()], f["keep"][()]
    assert np.array(meta["descan_plane_px"]) == pytest.approx(np.array([[48 + 5, 48 - 7], [0.3, 0], [0, -0.2]]), abs=0.02)
    assert shift == pytest.approx(shifts, abs=0.02)
    # the mean crop's CoM sits on the centre pixel: the odd crop has no bias, the plane no rounding
    assert center_of_mass(cropped.sum(axis=(0, 1))) == pytest.approx([16, 16], abs=0.05)
    assert cropped.min() == 0 and cropped.max() == 1
    assert (keep == (magnitude > magnitude.mean())).all() and summary["kept"]["RM"] == keep.sum()
    assert meta["scan_orientation_from"] == "given" and meta["bad_pixel_count"] == 0


def test_a_vacuum_reference_keeps_a_signal_the_disc_plane_would_take(tmp_path):
    """A polarization that turns steadily across the scan is, to a plane fit, descan: the disc
    plane takes it away. A vacuum scan with the same descan holds the descan alone, and with it
    as the reference the signal stays, to 0.02 px."""
    rows, cols = np.indices((6, 6))
    descan = np.stack([5 + 0.3 * rows, -7 - 0.2 * cols], axis=-1)
    signal = np.stack([0.2 * (rows - 2.5), np.zeros((6, 6))], axis=-1)  # a ramp along the rows
    write_descanned_set(tmp_path / "d.h5", descan, signal)
    write_descanned_set(tmp_path / "vacuum.h5", descan, np.zeros((6, 6, 2)))
    given = {"crop_px": 33, "rotation_deg": 0, "flip": False}
    preprocess_dataset(tmp_path / "d.h5", tmp_path / "plane.h5", PreprocessSettings(**given), False, progress=False)
    preprocess_dataset(tmp_path / "d.h5", tmp_path / "ref.h5", PreprocessSettings(**given, vacuum_reference=str(tmp_path / "vacuum.h5")), False,
                       progress=False)
    with io.open_dataset(tmp_path / "plane.h5") as f:
        assert f["beam_shift"][()] == pytest.approx(np.zeros((6, 6, 2)), abs=0.02)  # taken away with the descan
    with io.open_dataset(tmp_path / "ref.h5") as f:
        assert f["beam_shift"][()] == pytest.approx(signal, abs=0.02) and io.read_attrs(f)["descan_from"] == "vacuum reference"


def test_faithful_crop_moves_away_from_detector_data_discs_but_not_simulated_ones(tmp_path):
    write_descanned_set(tmp_path / "d.h5", (5, -7), SHIFTS)
    preprocess_dataset(tmp_path / "d.h5", tmp_path / "p.h5", PreprocessSettings(mode="faithful", crop_px=64), False, progress=False)
    with io.open_dataset(tmp_path / "p.h5") as f:
        origin, keep = io.read_attrs(f)["crop_origin_px"], f["keep"][()]
    assert origin == [48 - 5 - 32, 48 + 7 - 32]  # the offset applied with the wrong sign
    assert keep.all()  # not a training set: no filter
    write_descanned_set(tmp_path / "s.h5", (5, -7), SHIFTS, supercell="2x2x50")
    preprocess_dataset(tmp_path / "s.h5", tmp_path / "q.h5", PreprocessSettings(mode="faithful", crop_px=64), False, progress=False)
    with io.open_dataset(tmp_path / "q.h5") as f:
        assert io.read_attrs(f)["crop_origin_px"] == [16, 16]  # plain centre crop


def test_even_crop_biases_the_com_by_half_a_pixel():
    pattern = disc(64)
    for size, expected_bias in ((32, 0.5), (33, 0.0)):
        start = crop_origin(pattern.shape, size, (32, 32), True)
        crop = pattern[start[0]:start[0] + size, start[1]:start[1] + size]
        bias = center_of_mass(crop) - (size - 1) / 2
        assert bias == pytest.approx([expected_bias, expected_bias], abs=0.01)


def test_flat_and_nan_patterns_are_named(tmp_path):
    patterns = np.stack([[disc(32), np.zeros((32, 32), np.float32)]])
    with pytest.raises(ValueError, match=r"z\.h5: a pattern without positive total intensity \(scan row 0, column 1\)"):
        io.write_dataset(tmp_path / "z.h5", patterns, np.zeros((1, 2), np.int8), attrs())
    patterns[0, 1] = disc(32)
    io.write_dataset(tmp_path / "z.h5", patterns, np.zeros((1, 2), np.int8), attrs())
    with h5py.File(tmp_path / "z.h5", "r+") as f:  # made by other software
        f["patterns"][0, 1] = np.nan
    with pytest.raises(ValueError, match=r"z\.h5: NaN or infinite intensities \(scan row 0, column 1\)"):
        preprocess_dataset(tmp_path / "z.h5", tmp_path / "p.h5", PreprocessSettings(crop_px=16), False, progress=False)
    assert not (tmp_path / "p.h5").exists()


def test_crop_larger_than_the_detector_is_refused():
    with pytest.raises(ValueError, match="leaves the 32x32 detector; use a smaller crop_px"):
        crop_origin((32, 32), 32, (20, 16), False)


def test_augmentation_is_reproducible_per_seed_and_epoch():
    image = disc(32) * 0.8 + 0.1
    settings = AugmentationSettings()
    runs = [[augmentation_pipeline(settings, derived_seed(888, e))(image=image)["image"] for e in range(6)] for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    assert not all(np.array_equal(runs[0][0], other) for other in runs[0][1:])


def test_noise_strength_is_the_stated_one():
    """std_range (0.2, 0.44) of the [0, 1] range, as in albumentations 2.0.8: pinned, not assumed."""
    only_noise = AugmentationSettings(blur_p=0, brightness_contrast_p=0, noise_p=1, noise_std_range=(0.2, 0.2))
    image = np.full((128, 128), 0.5, np.float32)
    noisy = augmentation_pipeline(only_noise, 1)(image=image)["image"]
    assert np.std(noisy - image) == pytest.approx(0.2, abs=0.02)


def test_stratified_split_is_per_class_and_seeded():
    labels = np.repeat(np.arange(8), [100, 90, 80, 70, 60, 50, 40, 30])
    parts = split_indices(labels, SplitSettings(), seed=888)
    for k, n in enumerate([100, 90, 80, 70, 60, 50, 40, 30]):
        counts = np.bincount(parts[labels == k], minlength=3)
        assert abs(counts[0] - 0.8 * n) <= 1 and abs(counts[1] - 0.1 * n) <= 1
    assert np.array_equal(parts, split_indices(labels, SplitSettings(), seed=888))
    assert not np.array_equal(parts, split_indices(labels, SplitSettings(), seed=1212))


def test_faithful_split_is_the_same_for_every_seed_and_unstratified():
    labels = np.repeat(np.arange(8), 50)
    unstratified = SplitSettings(stratified=False)
    parts = split_indices(labels, unstratified, seed=888)
    assert np.array_equal(parts, split_indices(labels, unstratified, seed=5000))
    per_class_train = [np.sum(parts[labels == k] == 0) for k in range(8)]
    assert len(set(per_class_train)) > 1  # classes are not split evenly
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(labels, SplitSettings(fractions=(0.8, 0.1)), seed=1)


def test_split_file_per_configuration_and_seed(tmp_path):
    from polarmap.splits import make_split, read_split

    rng = np.random.default_rng(7)
    paths = []
    for k, name in enumerate(("RM", "LD")):
        shifts = rng.normal(0, 1, size=(10, 10, 2))
        patterns = np.stack([[disc(48, centre=(24 + s[0], 24 + s[1])) for s in row] for row in shifts])
        io.write_dataset(tmp_path / f"{name}.h5", patterns, np.full((10, 10), 5 * k, np.int8), attrs(name=f"train_{name}", classes=[name], supercell="2x2x50"))
        preprocess_dataset(tmp_path / f"{name}.h5", tmp_path / f"p_{name}.h5", PreprocessSettings(crop_px=33), True, progress=False)
        paths.append(tmp_path / f"p_{name}.h5")
    # the per-class random split (spatial blocking: tests/test_independence.py)
    random, random_pca = SplitSettings(blocked=False), SplitSettings(fractions=(0.9, 0.1), blocked=False)
    everything = make_split(paths, tmp_path / "none.npz", "none", 888, random, random_pca)
    filtered = make_split(paths, tmp_path / "filt.npz", "augmentation_filter", 888, random, random_pca)
    assert everything == {"train": 160, "validation": 20, "test": 20}
    assert sum(filtered.values()) < 200
    split = read_split(tmp_path / "filt.npz")
    assert list(split["datasets"]) == ["train_RM", "train_LD"] and set(split["label"]) == {0, 5}
    for i, path in enumerate(paths):
        with io.open_dataset(path) as f:
            keep = f["keep"][()]
        rows, cols = split["row"][split["dataset_index"] == i], split["col"][split["dataset_index"] == i]
        assert keep[rows, cols].all() and len(rows) == keep.sum()
    blocking = {"blocked": False, "block_cells": 0.5, "guard_px": 1}
    assert split["meta"] == {"configuration": "augmentation_filter", "seed": 888,
                             "split": {"fractions": [0.8, 0.1, 0.1], "stratified": True, "faithful_seed": 0, **blocking},
                             "pca_split": {"fractions": [0.9, 0.1], "stratified": True, "faithful_seed": 0, **blocking}, "sets_per_class": 1}
    for label in (0, 5):
        pca_test = split["pca_part"][split["label"] == label]
        assert abs(pca_test.sum() - 0.1 * pca_test.size) <= 1  # 90/10 per class
    with pytest.raises(ValueError, match="unknown preprocessing configuration 'more'"):
        make_split(paths, tmp_path / "x.npz", "more", 1, SplitSettings(), SplitSettings())


def test_diverse_split_draws_each_class_evenly_from_its_sets_and_keeps_the_base_count(tmp_path):
    """Two thicknesses of one class: half of each, so the class has as many patterns as one set."""
    from polarmap.splits import make_split, read_split

    paths = []
    for name in ("train_RM", "train_RM_thick"):
        patterns = np.stack([[disc(40, centre=(20, 20 + 0.1 * (r - c))) for c in range(10)] for r in range(10)])
        io.write_dataset(tmp_path / f"{name}.h5", patterns, np.zeros((10, 10), np.int8), attrs(name=name, classes=["RM"], supercell="2x2x50"))
        preprocess_dataset(tmp_path / f"{name}.h5", tmp_path / f"p_{name}.h5", PreprocessSettings(crop_px=33), True, progress=False)
        paths.append(tmp_path / f"p_{name}.h5")
    random, random_pca = SplitSettings(blocked=False), SplitSettings(fractions=(0.9, 0.1), blocked=False)
    base = make_split(paths[:1], tmp_path / "base.npz", "none", 888, random, random_pca)
    diverse = make_split(paths, tmp_path / "diverse.npz", "none", 888, random, random_pca, sets_per_class=2)
    assert sum(diverse.values()) == sum(base.values()) == 100
    split = read_split(tmp_path / "diverse.npz")
    assert np.bincount(split["dataset_index"]).tolist() == [50, 50]
    positions = set(zip(split["dataset_index"].tolist(), split["row"].tolist(), split["col"].tolist()))
    assert len(positions) == 100 and split["meta"]["sets_per_class"] == 2
    again = make_split(paths, tmp_path / "again.npz", "none", 888, random, random_pca, sets_per_class=2)
    assert again == diverse and (read_split(tmp_path / "again.npz")["row"] == split["row"]).all()


def test_domain_randomisation_counts_electrons_and_keeps_the_disc_where_it_was():
    from polarmap.augmentation import DomainRandomisationSettings, augmenter

    clean = disc(33, centre=(16.0, 17.0))  # shifted one pixel along +col (RM)
    low = DomainRandomisationSettings(dose_e_per_pattern=(500.0, 500.0), p=1.0)
    high = DomainRandomisationSettings(dose_e_per_pattern=(1e6, 1e6), background_e_per_px=(0.0, 0.0), read_noise_e=(0.0, 0.0), p=1.0)
    noisy = augmenter("domain_randomisation", AugmentationSettings(), low, 5)(clean)
    assert noisy.dtype == np.float32 and noisy.min() == 0.0 and noisy.max() == 1.0
    assert np.allclose(noisy, augmenter("domain_randomisation", AugmentationSettings(), low, 5)(clean))  # seeded
    assert not np.allclose(noisy, augmenter("domain_randomisation", AugmentationSettings(), low, 6)(clean))
    # counting noise shrinks with dose, and the disc stays on its side: the CoM keeps the class direction
    sharp = augmenter("domain_randomisation", AugmentationSettings(), high, 5)(clean)
    assert np.abs(sharp - clean).mean() < 0.5 * np.abs(noisy - clean).mean()
    row, col = center_of_mass(sharp)
    assert col - 16 > 0.8 and abs(row - 16) < 0.1
    # at 500 electrons the background dilutes the shift, but on average it still points along +col
    shifts = np.array([center_of_mass(augmenter("domain_randomisation", AugmentationSettings(), low, seed)(clean)) for seed in range(40)]) - 16
    assert shifts[:, 1].mean() > 0.05 and shifts[:, 1].mean() > 3 * abs(shifts[:, 0].mean())
    untouched = DomainRandomisationSettings(p=0.0)
    assert augmenter("domain_randomisation", AugmentationSettings(), untouched, 5)(clean) is clean
    with pytest.raises(ValueError, match="unknown augmentation 'cutout'"):
        augmenter("cutout", AugmentationSettings(), untouched, 5)


def test_blocks_in_threads_give_the_numbers_of_one_worker(tmp_path, monkeypatch):
    """Preprocessing and virtual images of a 6x6 detector scan (a descan plane, a hot pixel, turned
    and rescaled crops), its scan rows two at a time in 1, 2 or 4 threads: the same numbers."""
    from polarmap.imaging import scan_virtual_images
    from polarmap.preprocessing import preprocess_scan

    rng = np.random.default_rng(5)
    rows, cols = np.indices((6, 6))
    patterns = write_descanned_set(tmp_path / "d.h5", np.stack([5 + 0.3 * rows, -7 - 0.2 * cols], axis=-1), rng.normal(0, 0.5, (6, 6, 2)))
    patterns = (patterns * 1000 + rng.poisson(2.0, patterns.shape)).astype(np.float32)
    patterns[:, :, 10, 80] = 5e4
    settings = PreprocessSettings(crop_px=24, mrad_per_px=3.9, rotation_deg=23.0, flip=True, rows_per_block=2)
    monkeypatch.setattr(blocks, "CACHE_BLOCK_BYTES", 2 * patterns[0].nbytes)  # the virtual images' blocks: 2 scan rows too
    meta = attrs(supercell="experimental", detector_mrad_per_px=3.0)
    made = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"p{workers}.h5"
        preprocess_scan(patterns, np.zeros((6, 6), np.int8), meta, "d", out, settings, False, progress=False, workers=workers)
        images = scan_virtual_images(patterns, meta, "d", workers=workers)
        with h5py.File(out) as f:
            made[workers] = [f[key][()] for key in ("patterns", "beam_shift", "origin", "adf")] + [images[key] for key in ("adf", "bf", "com_mrad")]
    assert all(np.array_equal(a, b) for workers in (2, 4) for a, b in zip(made[1], made[workers]))


def test_crops_read_from_their_region_alone_are_the_crops_of_whole_patterns():
    """The second pass reads only `disc.crop_region` of each pattern: turned and rescaled crops of
    patterns whose discs wander over the detector, with bad pixels on the region's edge and
    inside it, come out as from the whole patterns, and the region is a small part of them."""
    from polarmap import disc
    from polarmap.orientation import detector_from_scan

    rng = np.random.default_rng(3)
    patterns = rng.gamma(2.0, 10.0, (12, 128, 128)).astype(np.float32)
    origins = np.array([60.0, 70.0]) + rng.uniform(-4, 4, (12, 2))
    scale, matrix, crop_px = 1.3, detector_from_scan(23.0, True), 24
    reach = disc.crop_reach(scale, matrix, crop_px)
    region = disc.crop_region(origins, reach, patterns.shape[1:])
    bad = np.zeros(patterns.shape[1:], bool)
    bad[region[0].start, 70] = bad[region[0].start + 1, 71] = bad[64, region[1].stop - 1] = bad[60, 66] = True
    whole = disc.resample(disc.fill_bad_pixels(patterns, bad), origins, scale, matrix, crop_px)
    offset = np.array([region[0].start, region[1].start])
    from_region = disc.resample(disc.fill_bad_pixels(patterns[:, region[0], region[1]], bad[region]), origins - offset, scale, matrix, crop_px)
    np.testing.assert_allclose(from_region, whole, rtol=0, atol=1e-4)
    assert from_region.shape == (12, crop_px, crop_px)
    area = (region[0].stop - region[0].start) * (region[1].stop - region[1].start)
    assert area < 0.3 * patterns[0].size
