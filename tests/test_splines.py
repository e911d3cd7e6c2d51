import numpy as np
import pytest
from scipy import ndimage

from polarmap import disc, splines
from polarmap.orientation import detector_from_scan


@pytest.mark.parametrize("rotation_deg, flip, scale", [(0.0, False, 3.148), (23.0, True, 1.3), (-97.0, False, 0.8)])
def test_compiled_samples_are_scipys_cubic_spline_of_each_window(rotation_deg, flip, scale):
    """`disc.resample`'s samples, turned, flipped and rescaled about sub-pixel origins, some of the
    windows cut by the pattern's edge, are what scipy's map_coordinates (order 3, mode "nearest")
    gives for each window: within a millionth of the patterns' scale."""
    rng = np.random.default_rng(11)
    patterns = rng.poisson(40.0, (9, 150, 160)).astype(np.float32)
    patterns[:, 70:80, 75:90] += 400  # a bright feature: the spline's overshoot beside it is kept
    crop_px, matrix = 24, detector_from_scan(rotation_deg, flip)
    reach = disc.crop_reach(scale, matrix, crop_px)
    last = np.array(patterns.shape[1:]) - 1 - reach
    origins = rng.uniform(reach + 0.5, last - 0.5, (9, 2))
    origins[0], origins[1] = reach + 0.2, last - 0.2  # windows cut at the first and the last pixels
    offsets = np.arange(crop_px) - crop_px // 2
    grid = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), axis=-1) * scale @ matrix.T
    expected, cut = [], []
    for pattern, origin in zip(patterns, origins):
        positions = origin + grid
        low = np.floor(positions.min(axis=(0, 1))).astype(int) - disc.SPLINE_MARGIN
        high = np.ceil(positions.max(axis=(0, 1))).astype(int) + disc.SPLINE_MARGIN + 1
        cut.append((low < 0).any() or (high > pattern.shape).any())
        low, high = np.maximum(low, 0), np.minimum(high, pattern.shape)
        window = pattern[low[0]:high[0], low[1]:high[1]]
        expected.append(ndimage.map_coordinates(window, np.moveaxis(positions - low, -1, 0), order=3, mode="nearest"))
    assert cut[0] and cut[1]
    resampled = disc.resample(patterns, origins, scale, matrix, crop_px)
    np.testing.assert_allclose(resampled, np.maximum(np.stack(expected), 0), rtol=0, atol=1e-6 * patterns.max())


def test_a_cubic_is_sampled_exactly_inside_its_window():
    """A cubic B-spline interpolates a cubic polynomial exactly, away from a window's edges (within
    the edge copies' reach, 0.27 a pixel, of 1e-9 at 16 pixels): the filter and its start are right."""
    rows, cols = np.indices((60, 70), dtype=np.float64)
    surface = 1e-3 * (rows - 30) ** 3 - 2e-3 * (cols - 35) ** 2 * (rows - 20) + 0.5 * cols + 100
    coordinates = np.stack(np.meshgrid(np.linspace(16.2, 43.7, 11), np.linspace(16.1, 53.9, 13), indexing="ij"), axis=-1)
    r, c = coordinates[..., 0], coordinates[..., 1]
    truth = 1e-3 * (r - 30) ** 3 - 2e-3 * (c - 35) ** 2 * (r - 20) + 0.5 * c + 100
    sampled = splines.cubic_samples(surface[None].astype(np.float32), np.array([[0, 0]]), np.array([[60, 70]]), coordinates[None])[0]
    np.testing.assert_allclose(sampled, truth, rtol=2e-6)


def test_samples_beyond_a_window_are_refused():
    """A compiled kernel reads no memory outside its window: a sample beyond the window's edge
    copies is an error, not a read of another pattern's pixels."""
    patterns = np.ones((2, 20, 20), np.float32)
    whole = np.array([[0, 0], [0, 0]]), np.array([[20, 20], [20, 20]])
    with pytest.raises(ValueError, match="sample lies beyond its window"):
        splines.cubic_samples(patterns, *whole, np.full((2, 3, 2), 31.0))
    with pytest.raises(ValueError, match="window reaches beyond its pattern"):
        splines.cubic_samples(patterns, whole[0], np.array([[20, 20], [21, 20]]), np.full((2, 3, 2), 5.0))
    with pytest.raises(ValueError, match="2 patterns need 2 windows"):
        splines.cubic_samples(patterns, *whole, np.full((3, 3, 2), 5.0))
    assert splines.cubic_samples(patterns[:0], whole[0][:0], whole[1][:0], np.zeros((0, 3, 2))).shape == (0, 3)
