"""What produced a result: config hash, code version, package versions, input hashes."""

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import polarmap

RESULT_PACKAGES = ("polarmap", "abtem", "ase", "numpy", "h5py", "tifffile")


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
