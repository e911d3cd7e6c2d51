"""What produced a result: config hash, code version, package versions, input hashes."""

import hashlib
import json
import platform
import subprocess
import tarfile
import time
from importlib import metadata
from io import BytesIO
from pathlib import Path

import polarmap


def settings_from_json(cls, values: dict):
    """A frozen settings dataclass from the config or a record, where ranges arrive as lists."""
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


RESULT_PACKAGES = ("polarmap", "abtem", "ase", "numpy", "h5py", "tifffile")
# what the learning and evaluation results also depend on
RECORD_PACKAGES = RESULT_PACKAGES + ("torch", "torchvision", "scikit-learn", "albumentations", "opencv-python-headless", "scipy", "pandas", "matplotlib")


def config_hash(settings) -> str:
    """SHA-256 of the canonical JSON of a settings mapping (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | Path, block_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """The package version plus the git commit of the source tree when it is a checkout."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(polarmap.__file__).parent, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{polarmap.__version__}+{commit}" if commit else polarmap.__version__


def git_state() -> dict:
    """Commit of the source tree and whether it had uncommitted changes (empty outside a checkout)."""
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(polarmap.__file__).parent,
                                capture_output=True, text=True, timeout=10)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(polarmap.__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": "", "dirty": None}
    if commit.returncode != 0:
        return {"git_commit": "", "dirty": None}
    return {"git_commit": commit.stdout.strip(), "dirty": bool(result.stdout.strip())}


def package_versions(names=RESULT_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance_attrs(settings) -> dict[str, str]:
    """Attributes stored with every result file."""
    return {
        "config_hash": config_hash(settings),
        "config_json": json.dumps(settings, sort_keys=True, default=str),
        "code_version": code_version(),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
    }


def result_record(inputs, settings, started: float, **extra) -> dict:
    """The record kept next to a result: code version (git commit and dirty flag), config hash,
    SHA-256 of every input, package versions, machine, wall time, plus `extra` (seed, device, ...)."""
    return {
        "code_version": code_version(), **git_state(),
        "config_hash": config_hash(settings), "settings": settings,
        "inputs": {str(p): file_sha256(p) for p in inputs},
        "package_versions": package_versions(RECORD_PACKAGES),
        "machine": f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})",
        "wall_seconds": round(time.perf_counter() - started, 3), **extra,
    }


def write_record(path, inputs, settings, started: float, **extra) -> dict:
    """Write `result_record` as JSON at `path`, whole or not at all."""
    from polarmap.atomic import write_text_atomically

    record = result_record(inputs, settings, started, **extra)
    write_text_atomically(path, json.dumps(record, indent=2, default=str) + "\n")
    return record


def archive(results, out, config_files=(), report=None, include=()) -> tuple[Path, int]:
    """Pack a study into one .tar.gz for publication: tables, figures, predictions, metrics,
    records, logs, benchmarks and summaries of `results`, the config files and the HTML report,
    with MANIFEST.json (SHA-256 of every member). HDF5 data sets and model weights are large and
    go in only when `include` names "datasets" / "models"."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise ValueError(f"{results}: no such results folder; run the study first (snakemake) or name its folder")
    members = {}
    for path in sorted(p for p in results.rglob("*") if p.is_file()):
        if path.name.endswith((".partial", ".tmp")) or ".tmp." in path.name or path.name == "checkpoint.pt":
            continue  # unfinished work
        if path.suffix == ".h5" and "datasets" not in include:
            continue
        if path.name in ("model.pt", "model.npz") and "models" not in include:
            continue
        members[f"{results.name}/{path.relative_to(results)}"] = path
    for path in map(Path, config_files):
        members[f"{results.name}/config/{path.name}"] = path
    if report:
        members[f"{results.name}/{Path(report).name}"] = Path(report)
    for name, path in members.items():
        if not path.is_file():
            raise ValueError(f"{path}: not found; give an existing file to pack")
    manifest = {name: file_sha256(path) for name, path in members.items()}
    from polarmap.atomic import replace_atomically

    def pack(tmp):
        with tarfile.open(tmp, "w:gz") as tar:
            for name, path in members.items():
                tar.add(path, arcname=name)
            data = json.dumps({"code_version": code_version(), **git_state(), "files": manifest}, indent=2).encode()
            info = tarfile.TarInfo(f"{results.name}/MANIFEST.json")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, BytesIO(data))

    replace_atomically(out, pack)
    return out, len(members) + 1
