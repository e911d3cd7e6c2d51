"""Scan rotation and flip recovered from the CoM field of a real abTEM scan, its detector turned
and mirrored as a microscope's may be."""

import numpy as np
import pytest
from scipy import ndimage

from polarmap.orientation import find_scan_orientation, to_scan_frame
from polarmap.virtual import annular_mask, com_field, integrated_com, virtual_image
from test_virtual import simulated_scan  # noqa: F401  (the fixture: RU, 10 nm, 16x16 positions)


def fields(patterns, mrad):
    """The CoM field, its scan mean removed (turning about the array's centre, half a pixel off the
    optical axis, adds a constant), and the ADF image."""
    centre = np.array(patterns.shape[-2:]) // 2
    adf = virtual_image(patterns, annular_mask(patterns.shape[-2:], centre, mrad, 60, 150))
    field = com_field(patterns, centre, mrad)
    return field - field.mean(axis=(0, 1)), adf


def test_an_unturned_scan_is_found_unturned(simulated_scan):  # noqa: F811
    atoms, patterns, step, mrad = simulated_scan
    field, adf = fields(patterns, mrad)
    found = find_scan_orientation(field, adf)
    assert found.rotation_deg == pytest.approx(0, abs=1) and not found.flip
    assert found.curl_fraction < 0.05 < found.other_flip_curl_fraction and found.divergence_adf_correlation < -0.5


@pytest.mark.parametrize("turn_deg, mirror", [(30, True), (30, False), (-115, True), (180, False)])
def test_a_turned_and_mirrored_detector_is_recovered_within_a_degree(simulated_scan, turn_deg, mirror):  # noqa: F811
    atoms, patterns, step, mrad = simulated_scan
    reference, adf = fields(patterns, mrad)
    detector = patterns[..., :, ::-1] if mirror else patterns
    # every pattern turned about the detector centre (scipy turns the displayed array, row 0 on top)
    turned = np.stack([ndimage.rotate(p, turn_deg, axes=(-2, -1), reshape=False, order=1) for p in detector.reshape(-1, *patterns.shape[-2:])])
    field, _ = fields(turned.reshape(patterns.shape), mrad)
    found = find_scan_orientation(field, adf)
    assert found.flip == mirror
    back = to_scan_frame(field, found.rotation_deg, found.flip)
    # the map comes back: the field as measured unturned, and so its iDPC image
    assert np.corrcoef(back.ravel(), reference.ravel())[0, 1] > 0.99
    assert np.corrcoef(integrated_com(back).ravel(), integrated_com(reference).ravel())[0, 1] > 0.99
    # within a degree of the turn that undoes scipy's: scipy's turn is clockwise with +row up, so the
    # detector is R(-turn) M (scan); back is M R(turn) = R(-turn) M, mirror first as the convention says
    expected = -turn_deg if mirror else turn_deg
    assert abs((found.rotation_deg - expected + 180) % 360 - 180) < 1, (found, expected)


def test_a_field_without_deflection_is_refused():
    with pytest.raises(ValueError, match="zero everywhere"):
        find_scan_orientation(np.zeros((8, 8, 2)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="at least 4x4"):
        find_scan_orientation(np.zeros((2, 8, 2)), np.ones((2, 8)))
