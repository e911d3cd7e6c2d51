"""Writers that leave a file whole or not at all: write beside it, then rename over it. A leaf
module, so that models and provenance can write without the data set format."""

from pathlib import Path

import numpy as np


def temporary_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def replace_atomically(path, write, tmp: Path | None = None) -> None:
    """`write(tmp)`, then rename it over `path`; on any failure (a full disk, an interrupt) the
    temporary file goes and `path` is left as it was."""
    path = Path(path)
    tmp = tmp or temporary_path(path)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def save_npz_atomically(path, arrays: dict) -> None:
    """Plain arrays (readable with allow_pickle=False); np.savez needs the .npz suffix."""
    path = Path(path)
    replace_atomically(path, lambda tmp: np.savez(tmp, **arrays), path.with_name(path.name + ".tmp.npz"))


def refuse_overwriting(source, out) -> None:
    """A stage writes a new file beside its input, never over it."""
    if Path(out).resolve() == Path(source).resolve():
        raise ValueError(f"{out}: is the input file itself; write the output elsewhere (the input was left as it was)")
