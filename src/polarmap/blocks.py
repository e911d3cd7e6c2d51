"""One way to walk a scan: blocks of scan rows, a few at a time, so that memory stays bounded
whatever the scan's size (LiberTEM's UDFs walk a data set's partitions in the same manner). The
stages that read every pattern (preprocessing, virtual images, the audit's content hash, the
experiment-like transform, the simulation's output) go through here; `map_blocks` runs a
function of a block on several blocks at once. A leaf module."""

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import Callable, Iterator

import numpy as np
from threadpoolctl import threadpool_limits


# Patterns handled together within a block: every sum over them is made while they are in the
# processor's cache (16 patterns of 256x256 float32: 4 MB), instead of one pass over the block each.
CACHE_PATTERNS = 16
# A block read once and summed several ways (the virtual images) is best read whole into the
# cache: blocks of about this many bytes of float32 patterns (one scan row of 128 patterns of
# 256x256 px) measured 1.5x faster than blocks of 8 such rows, in one thread and in two.
CACHE_BLOCK_BYTES = 32 * 2**20


def cached_parts(n_patterns: int) -> Iterator[slice]:
    """Slices of a block's patterns (flattened over its scan positions) small enough to stay in cache."""
    for first in range(0, n_patterns, CACHE_PATTERNS):
        yield slice(first, min(first + CACHE_PATTERNS, n_patterns))


def rows_in_cache(shape) -> int:
    """Scan rows of float32 patterns of a (scan rows, scan cols, ...) `shape` that fill about
    CACHE_BLOCK_BYTES: at least one, at most the scan's."""
    return min(int(shape[0]), max(1, CACHE_BLOCK_BYTES // (4 * int(np.prod(shape[1:])))))


def row_ranges(n_rows: int, rows_per_block: int, first_row: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of each block of scan rows from `first_row` on."""
    for start in range(first_row, n_rows, rows_per_block):
        yield start, min(start + rows_per_block, n_rows)


def scan_blocks(patterns, rows_per_block: int, detector=None, dtype=None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) of a (scan rows, scan cols, detector rows, detector cols) array: an h5py
    dataset, a memory map or an array. `detector`: a (row slice, col slice) crop of every pattern.
    Without `dtype` each block is read as stored; with it, into one buffer of that dtype reused
    from block to block (no allocation per block; the block is valid until the next one)."""
    crop = _selection(detector)
    if dtype is None:
        for start, stop in row_ranges(patterns.shape[0], rows_per_block):
            yield start, patterns[(slice(start, stop), *crop[1:])]
        return
    buffer = _buffer(patterns, rows_per_block, crop, dtype)
    for start, stop in row_ranges(patterns.shape[0], rows_per_block):
        view = buffer[: stop - start]
        _read_into(patterns, view, (slice(start, stop), *crop[1:]))
        yield start, view


def map_blocks(function: Callable, patterns, rows_per_block: int, workers: int = 1, dtype=np.float32, detector=None) -> Iterator:
    """`function(first row, block)` of every block of scan rows of `patterns` (read as `dtype`),
    in scan order, `workers` blocks at a time in threads, each read into a buffer of its own: the
    results are those of one worker, which is how it runs with `workers` 1. Numpy's loops, its
    matrix products, the compiled splines and the readers' copies release the GIL, so the blocks
    share the cores. The block is reused once `function` returns: a result must not be a view of
    it. `detector`: a (row slice, col slice) crop of every pattern, the only pixels read."""
    crop = _selection(detector)
    if workers <= 1:
        for start, block in scan_blocks(patterns, rows_per_block, detector, dtype):
            yield function(start, block)
        return
    buffers = SimpleQueue()
    for _ in range(workers):
        buffers.put(_buffer(patterns, rows_per_block, crop, dtype))

    def run(start: int, stop: int):
        buffer = buffers.get()
        try:
            view = buffer[: stop - start]
            _read_into(patterns, view, (slice(start, stop), *crop[1:]))
            return function(start, view)
        finally:
            buffers.put(buffer)

    # the blocks share the cores: a BLAS that threads each matrix product across them as well
    # oversubscribes them (the virtual images of a scan 1.3x slower on 2 cores)
    with ThreadPoolExecutor(workers) as pool, threadpool_limits(limits=1, user_api="blas"):
        pending = deque()
        for start, stop in row_ranges(patterns.shape[0], rows_per_block):
            pending.append(pool.submit(run, start, stop))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _selection(detector) -> tuple:
    """The index of every pattern of a block, or of its `detector` (row slice, col slice) crop."""
    return np.s_[:, :] if detector is None else np.s_[:, :, detector[0], detector[1]]


def _buffer(patterns, rows_per_block: int, crop, dtype) -> np.ndarray:
    sample = patterns[(slice(0, 1), slice(0, 1), *crop[2:])]
    return np.empty((rows_per_block, patterns.shape[1], *sample.shape[2:]), dtype=dtype)


def _read_into(patterns, view: np.ndarray, selection) -> None:
    if hasattr(patterns, "read_direct"):  # h5py, io.ScanFrames: straight into the buffer, converted on the way
        patterns.read_direct(view, selection)
    else:
        view[...] = patterns[selection]
