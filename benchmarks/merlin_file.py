"""Write a data set (a simulated or experiment-like one of a study) as a Merlin .mib and .hdr, the
way the detector writes them, to try `polarmap map` on a file whose answer is known:

    python benchmarks/merlin_file.py results/default/datasets/3E.h5 3E.mib

Counts are rounded to whole electrons and kept below 4096 (12 bits); the frames are written as the
microscope displays them (the data set's +row up turned back), so that the map's reading,
orientation and calibration are what they would be for a real acquisition. The calibration is not
in a Merlin file: give `--mrad-per-px` to `polarmap map` (the set's `detector_mrad_per_px`).
"""

import sys
from pathlib import Path

import numpy as np

from reading import write_mib


def main() -> None:
    from polarmap import io

    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    with io.open_dataset(source) as f:
        patterns = f["patterns"]
        shape = patterns.shape[:2]
        rows = (np.clip(np.rint(patterns[shape[0] - 1 - row][:, ::-1, :]), 0, 4095) for row in range(shape[0]))
        write_mib(out, rows, shape)
        print(f"{out}: {shape[0]}x{shape[1]} frames of {patterns.shape[2]}x{patterns.shape[3]}; "
              f"map it with --mrad-per-px {float(io.read_attrs(f)['detector_mrad_per_px']):.6g}")


if __name__ == "__main__":
    main()
