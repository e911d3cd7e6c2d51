"""Every random stream of the study derived from its seeds and names, reproducibly (a leaf module)."""

import hashlib

import numpy as np


def name_key(name: str) -> int:
    """A stable integer for a name (the first four bytes of its SHA-256), to derive seeds from."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def derived_seed(*keys: int) -> int:
    """A distinct, reproducible seed per key tuple: (training seed, epoch) for the shuffle,
    (training seed, epoch, batch) for a batch's augmentation."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
