"""The range of each physical quantity that a microscope can produce: one place for the command
line, the study config, the readers and the data sets alike. A value outside it (negative, NaN,
infinite, a unit mistaken by 1e3) is a mistake, refused before it is written anywhere. A leaf
module."""

import math

from ase import units

# key: (lowest, highest, unit, what it is)
RANGES = {
    "energy_kev": (1.0, 3000.0, "keV", "beam energy"),
    "semiangle_mrad": (0.1, 100.0, "mrad", "probe semi-angle"),
    "detector_mrad_per_px": (1e-4, 100.0, "mrad/px", "detector sampling"),
    "scan_step_angstrom": (1e-3, 1e5, "Angstrom", "scan step"),
    "thickness_nm": (0.1, 1e4, "nm", "specimen thickness"),
}


def quantity_problem(key: str, value) -> str | None:
    """Why `value` cannot be the quantity `key`, or None where it can."""
    low, high, unit, what = RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        return f"{key} {value!r} is not a {what}: a microscope gives {low:g} to {high:g} {unit}"
    return None


def check_quantity(key: str, value, where: str = "", fix: str = "") -> float:
    """`value` as a float, or one line naming `where` (the file or option), the key and the fix."""
    problem = quantity_problem(key, value)
    if problem:
        raise ValueError(f"{where + ': ' if where else ''}{problem}{'; ' + fix if fix else ''}")
    return float(value)


def stored_quantity_problem(key: str, value) -> str | None:
    """A data set's stored calibration: unknown (NaN) or within its range."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return quantity_problem(key, value)


def wavelength_angstrom(energy_kev: float) -> float:
    """The relativistic electron wavelength, computed as abTEM computes it (from ase's units), so
    that a detector's calibration and the simulations' sampling agree to the last bit."""
    energy = energy_kev * 1e3
    return float(units._hplanck * units._c / math.sqrt(energy * (2 * units._me * units._c**2 / units._e + energy)) / units._e * 1.0e10)
