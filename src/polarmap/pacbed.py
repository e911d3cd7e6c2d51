"""The specimen's thickness from a scan's position-averaged pattern (PACBED), as LeBeau et al.
(Ultramicroscopy 110, 118, 2010) measure it: against simulated PACBEDs of a thickness series at
the scan's energy and semi-angle. A leaf module: patterns in, a thickness out, no files.

The comparison is of radial profiles (the mean intensity in rings of equal scattering angle, each
profile summing to one), so that it needs neither the detector's orientation nor the crystal's:
a turned or mirrored detector, and any polarization direction (each class is a rotation or mirror
of another), give the same profile. Measured on abTEM scans of four classes at 10-35 nm against a
library of one class with frozen phonons: every thickness found within one library step (a
thicker specimen than the library's thickest is said to be, not placed in it). The
misfit is a chi-square (each ring's squared difference over the library's intensity there), which
weights the dark field's faint rings as the bright disc's."""

from dataclasses import dataclass

import numpy as np

# thicknesses whose misfit is within this factor of the best one bound the estimate's range
MISFIT_RANGE = 1.5
# a model trained this close to the estimate's range still counts as trained at its thickness
THICKNESS_TOLERANCE_NM = 2.5
# a best misfit above this is no match: measured 2e-4 to 0.014 on abTEM scans of 10-35 nm
# (the static lattice's the largest: it lacks the phonons' diffuse scattering), 0.43 on a bare disc
MAX_MISFIT = 0.1
# a range wider than this (nm) is said to be poorly determined
POORLY_DETERMINED_NM = 10.0
# rings within this many ring widths of the bright-field disc's edge are not compared
EDGE_RINGS = 1.5


def radial_profile(pattern: np.ndarray, centre_px, mrad_per_px: float, ring_mrad: float, reach_mrad: float) -> np.ndarray:
    """The pattern's mean intensity in rings `ring_mrad` wide from the optical axis (`centre_px`)
    out to `reach_mrad`, normalised to sum to one."""
    rows, cols = np.indices(pattern.shape, dtype=np.float64)
    ring = (np.hypot(rows - centre_px[0], cols - centre_px[1]) * mrad_per_px / ring_mrad).astype(np.int64)
    rings = int(reach_mrad / ring_mrad)
    inside = ring < rings
    counts = np.bincount(ring[inside], minlength=rings)
    if (counts == 0).any():
        raise ValueError(f"a ring of {ring_mrad:.4g} mrad holds no pixel of this {mrad_per_px:.4g} mrad/px detector: rings must be at least "
                         "one pixel wide")
    profile = np.bincount(ring[inside], weights=np.asarray(pattern, dtype=np.float64)[inside], minlength=rings) / counts
    total = profile.sum()
    if not total > 0:
        raise ValueError("the position-averaged pattern holds no intensity")
    return profile / total


def outer_mrad(shape, centre_px, mrad_per_px: float) -> float:
    """The largest scattering angle a whole ring reaches on this detector."""
    return float(min(centre_px[0], centre_px[1], shape[0] - 1 - centre_px[0], shape[1] - 1 - centre_px[1]) * mrad_per_px)


@dataclass(frozen=True)
class ThicknessEstimate:
    thickness_nm: float  # NaN where no library thickness matches
    low_nm: float  # the library's thicknesses whose misfit is within MISFIT_RANGE of the best
    high_nm: float  # infinite where the best is the library's thickest: the specimen may be thicker
    misfit: np.ndarray  # per library thickness
    note: str = ""  # why the estimate is open-ended or missing

    def summary(self) -> dict:
        def nm(value):
            return round(value, 2) if np.isfinite(value) else None

        return {"thickness_nm": nm(self.thickness_nm), "range_nm": [nm(self.low_nm), nm(self.high_nm)], "misfit": float(self.misfit.min()),
                "note": self.note, "method": "PACBED radial profile against simulated thicknesses (LeBeau et al. 2010)"}

    def outside(self, trained_nm) -> str:
        """"" where the range meets a thickness the model was trained at (`trained_nm`, within
        THICKNESS_TOLERANCE_NM) or no thickness was found, otherwise one line saying that the
        model's answers are outside its domain."""
        trained = np.asarray(sorted(set(float(t) for t in trained_nm)))
        if not np.isfinite(self.thickness_nm):
            return ""
        if not len(trained):
            return "the model records no training thickness: whether this scan is in its domain is not known"
        if ((trained >= self.low_nm - THICKNESS_TOLERANCE_NM) & (trained <= self.high_nm + THICKNESS_TOLERANCE_NM)).any():
            return ""
        span = f"{self.low_nm:.0f}-{self.high_nm:.0f} nm" if np.isfinite(self.high_nm) else f"at least {self.low_nm:.0f} nm"
        return (f"the scan is about {self.thickness_nm:.0f} nm thick ({span} from its PACBED); the model was "
                f"trained at {', '.join(f'{t:g}' for t in trained)} nm: its answers are outside its domain")


def estimate_thickness(pacbed: np.ndarray, centre_px, mrad_per_px: float, library: dict) -> ThicknessEstimate:
    """The library thickness whose PACBED best matches `pacbed` (its optical axis at `centre_px`),
    and the contiguous range around it within MISFIT_RANGE of its misfit. `library`: "patterns"
    (thickness, rows, cols) with the optical axis at (rows // 2, cols // 2), "mrad_per_px" and
    "thickness_nm". Rings are the coarser of the two samplings wide, out to the angle both reach."""
    patterns, library_mrad = np.asarray(library["patterns"]), float(library["mrad_per_px"])
    library_centre = np.array(patterns.shape[1:]) // 2
    ring = max(library_mrad, mrad_per_px)
    reach = min(outer_mrad(pacbed.shape, centre_px, mrad_per_px), outer_mrad(patterns.shape[1:], library_centre, library_mrad))
    profile = radial_profile(pacbed, centre_px, mrad_per_px, ring, reach)
    library_profiles = np.array([radial_profile(p, library_centre, library_mrad, ring, reach) for p in patterns])
    # the rings at the disc's edge hold the aperture's shape, not the specimen's, and change most
    # with a fraction of a pixel of error in the optical axis: left out
    radius = (np.arange(len(profile)) + 0.5) * ring
    away = np.abs(radius - float(library["semiangle_mrad"])) > EDGE_RINGS * ring
    # and rings beyond the simulation's band limit (abTEM's antialiasing aperture), where the
    # library holds nothing and the detector may hold counts
    away &= library_profiles.min(axis=0) > 1e-9 * library_profiles.max()
    profile, library_profiles = profile[away] / profile[away].sum(), library_profiles[:, away] / library_profiles[:, away].sum(axis=1, keepdims=True)
    thicknesses_nm = np.asarray(library["thickness_nm"], dtype=np.float64)
    misfit = (((library_profiles - profile) ** 2) / np.maximum(library_profiles, 1e-12)).sum(axis=1)
    best = int(np.argmin(misfit))
    close = misfit <= MISFIT_RANGE * misfit[best]
    low = high = best
    while low > 0 and close[low - 1]:
        low -= 1
    while high < len(misfit) - 1 and close[high + 1]:
        high += 1
    if misfit[best] > MAX_MISFIT:
        return ThicknessEstimate(float("nan"), float("nan"), float("nan"), misfit,
                                 f"no simulated thickness matches this PACBED (misfit {misfit[best]:.3g}, at most {MAX_MISFIT:g} for a "
                                 "match): not a crystal of the library's, or another probe")
    if high == len(misfit) - 1:
        return ThicknessEstimate(float(thicknesses_nm[best]), float(thicknesses_nm[low]), float("inf"), misfit,
                                 f"at the library's thickest ({thicknesses_nm[-1]:.0f} nm): the specimen may be thicker; simulate a "
                                 "thicker library (--max-thickness-nm)")
    note = ""
    if thicknesses_nm[high] - thicknesses_nm[low] > POORLY_DETERMINED_NM:
        note = (f"poorly determined: every thickness from {thicknesses_nm[low]:.0f} to {thicknesses_nm[high]:.0f} nm fits within "
                f"{MISFIT_RANGE:g} times the best misfit (a thin crystal, few rings within the detector's reach, or no crystal)")
    return ThicknessEstimate(float(thicknesses_nm[best]), float(thicknesses_nm[low]), float(thicknesses_nm[high]), misfit, note)
