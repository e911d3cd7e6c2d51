"""Writers that leave a file whole or not at all: write beside it, then rename over it; and the
reader of the arrays they write. A leaf module, so that models and provenance can write without
the data set format."""

import os
import tempfile
from pathlib import Path

import numpy as np


def temporary_path(path, suffix: str = "") -> Path:
    """A new, empty working file beside `path`, created exclusively under a name no other file has:
    a write on its way to `path` never touches a file the user named, even one named like ours.
    `suffix` for writers that choose the format by it (np.savez, matplotlib)."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(handle)
    return Path(name)


def replace_atomically(path, write, suffix: str = "") -> None:
    """`write(tmp)`, then rename it over `path`; on any failure (a full disk, an interrupt) the
    temporary file goes and `path` is left as it was."""
    path = Path(path)
    tmp = temporary_path(path, suffix)
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
    replace_atomically(path, lambda tmp: np.savez(tmp, **arrays), ".npz")


def read_npz(path, what: str, fix: str) -> dict:
    """Every array of an .npz file (never unpickled), or one line naming the file, `what` it
    should be and the `fix`, for a missing, truncated or foreign file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; {fix}") from None
    except Exception as err:  # numpy and zipfile raise several types for damaged files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable {what} ({reason}); {fix}") from None


def same_file(a, b) -> bool:
    """One file by its resolved path, or by its inode (a hard link, another mount of it)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting(source, out) -> None:
    """A stage writes a new file beside its input, never over it."""
    if same_file(source, out):
        raise ValueError(f"{out}: is the input file itself; write the output elsewhere (the input was left as it was)")
