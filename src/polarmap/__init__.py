"""polarmap: machine-learning polarization mapping in ferroelectrics from 4D-STEM."""

__version__ = "0.1.0"
