"""One way to walk a scan: blocks of scan rows, a few at a time, so that memory stays bounded
whatever the scan's size (LiberTEM's UDFs walk a data set's partitions in the same manner). The
stages that read every pattern (preprocessing, virtual images, the audit's content hash, the
experiment-like transform, the simulation's output) go through here. A leaf module."""

from typing import Iterator

import numpy as np


def row_ranges(n_rows: int, rows_per_block: int, first_row: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of each block of scan rows from `first_row` on."""
    for start in range(first_row, n_rows, rows_per_block):
        yield start, min(start + rows_per_block, n_rows)


def scan_blocks(patterns, rows_per_block: int, detector=None, dtype=None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) of a (scan rows, scan cols, detector rows, detector cols) array: an h5py
    dataset, a memory map or an array. `detector`: a (row slice, col slice) crop of every pattern.
    Without `dtype` each block is read as stored; with it, into one buffer of that dtype reused
    from block to block (no allocation per block; the block is valid until the next one)."""
    crop = np.s_[:, :] if detector is None else np.s_[:, :, detector[0], detector[1]]
    if dtype is None:
        for start, stop in row_ranges(patterns.shape[0], rows_per_block):
            yield start, patterns[(slice(start, stop), *crop[1:])]
        return
    sample = patterns[(slice(0, 1), slice(0, 1), *crop[2:])]
    buffer = np.empty((rows_per_block, patterns.shape[1], *sample.shape[2:]), dtype=dtype)
    for start, stop in row_ranges(patterns.shape[0], rows_per_block):
        view = buffer[: stop - start]
        selection = (slice(start, stop), *crop[1:])
        if hasattr(patterns, "read_direct"):  # h5py: straight into the buffer, converted on the way
            patterns.read_direct(view, selection)
        else:
            view[...] = patterns[selection]
        yield start, view
