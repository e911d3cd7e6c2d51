"""Leakage audit: is every evaluation set, and every model's synthetic-test part, independent of
the data the models were trained on?

Two checks per evaluated set:
  content   SHA-256 of the raw /patterns against every training set's: an identical file.
  patterns  for a seeded sample of its preprocessed patterns, the distance to the nearest
            preprocessed training pattern, as the root-mean-square difference per pixel of two
            [0, 1] patterns (RMS).
Tolerances, measured at the default scale (benchmarks/independence.md):
  exact (RMS < 1e-5)  float noise of the same simulation: an ordered cell's exact twins (one cell
                      apart diagonally) differ by at most 5.1e-7.
  near (RMS < 5e-3)   the same crystal at an equivalent position: the ordered cell one cell apart
                      along x (the same columns, K and Na swapped along the beam) differs by
                      3.5e-4 to 2.9e-3. Independently seeded crystals never come that close: the
                      nearest pattern of another crystal of the same class differs by at least
                      2.0e-2 (median 3.3e-2), of another class by at least 2.1e-2.
A set is independent when no whole-set copy exists and its near copies stay below 1 % of the
sample. A synthetic-test part is audited against its own training part the same way.
"""

import hashlib
from pathlib import Path

import numpy as np

from polarmap import io
from polarmap.atomic import write_text_atomically
from polarmap.blocks import scan_blocks
from polarmap.seeds import name_key
from polarmap.splits import read_split

EXACT_RMS = 1e-5
NEAR_RMS = 5e-3
NEAR_FRACTION_ALLOWED = 0.01
TRAIN = 0


def content_hash(path, rows_per_block: int = 8) -> str:
    """SHA-256 of a data set's /patterns as stored (shape, dtype and bytes), read in blocks."""
    digest = hashlib.sha256()
    with io.open_dataset(path) as f:
        patterns = f["patterns"]
        digest.update(f"{patterns.shape}{patterns.dtype}".encode())
        for _, block in scan_blocks(patterns, rows_per_block):
            digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def nearest_rms(samples: np.ndarray, reference: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each sample pattern (n, ...), the RMS difference to its nearest reference pattern
    (m, ...). Squared distances from |a|^2 + |b|^2 - 2 a.b in float64, which resolves the 1e-7
    differences of float noise."""
    a = samples.reshape(len(samples), -1).astype(np.float64)
    size = a.shape[1]
    best = np.full(len(a), np.inf)
    a_norm = (a * a).sum(axis=1)
    flat = reference.reshape(len(reference), -1)
    for start in range(0, len(flat), chunk):
        b = flat[start:start + chunk].astype(np.float64)
        squared = a_norm[:, None] + (b * b).sum(axis=1)[None, :] - 2 * a @ b.T
        best = np.minimum(best, squared.min(axis=1))
    return np.sqrt(np.maximum(best, 0.0) / size)


def _sample(n_total: int, n: int, name: str) -> np.ndarray:
    """A seeded, sorted sample of pattern indices, the same for the same set name."""
    return np.sort(np.random.default_rng(name_key(name)).permutation(n_total)[: min(n, n_total)])


def _patterns(path) -> tuple[dict, np.ndarray, int]:
    """A set's attributes, its patterns as (positions, rows, cols), row-major over the scan, and
    the scan's number of columns."""
    with io.open_dataset(path) as f:
        attrs = io.read_attrs(f)
        patterns = f["patterns"][()]
    return attrs, patterns.reshape(-1, *patterns.shape[2:]), patterns.shape[1]


def _verdict(distances: np.ndarray, same_content: list[str]) -> dict:
    exact = float((distances < EXACT_RMS).mean()) if distances.size else float("nan")
    near = float((distances < NEAR_RMS).mean()) if distances.size else float("nan")
    return {
        "same_content_as": " ".join(same_content), "sampled": int(distances.size), "exact_copies": exact,
        "near_copies": near, "median_rms": float(np.median(distances)) if distances.size else float("nan"),
        "independent": not same_content and not near > NEAR_FRACTION_ALLOWED,
    }


def audit_sets(training: list[tuple[str, str]], evaluated: list[tuple[str, str, str]], sample: int = 256) -> list[dict]:
    """training: (raw, preprocessed) files of every training set; evaluated: (raw, preprocessed,
    role) of every other set. One row per evaluated set."""
    hashes = {}
    for raw, _ in training:
        with io.open_dataset(raw) as f:
            hashes.setdefault(content_hash(raw), []).append(io.read_attrs(f)["name"])
    samples, sources = {}, {}
    for raw, preprocessed, role in evaluated:
        attrs, patterns, _ = _patterns(preprocessed)
        name = attrs["name"]
        samples[name] = (role, hashes.get(content_hash(raw), []), patterns[_sample(len(patterns), sample, name)])
        sources[name] = Path(attrs["clean_source"]).stem if "clean_source" in attrs else ""  # experiment-like: its clean file
    nearest = {name: np.full(len(s[2]), np.inf) for name, s in samples.items()}
    for _, preprocessed in training:  # one training set in memory at a time
        _, reference, _ = _patterns(preprocessed)
        for name, (_, _, chosen) in samples.items():
            nearest[name] = np.minimum(nearest[name], nearest_rms(chosen, reference))
    rows = {name: {"set": name, "role": role, "compared_with": "every training set", **_verdict(nearest[name], same)}
            for name, (role, same, _) in samples.items()}
    for name, source in sources.items():  # detector noise hides a copied crystal: judge its clean source too
        if source in rows:
            rows[name]["compared_with"] += f" (and via {source})"
            rows[name]["independent"] = rows[name]["independent"] and rows[source]["independent"]
    return list(rows.values())


# the held-out part of each split in a split file: the models' test part, and PCA+kNN's
SPLIT_PARTS = {"part": ("", 2), "pca_part": ("PCA+kNN, ", 1)}


def audit_split(split_path, preprocessed: list[str], sample: int = 256) -> list[dict]:
    """The synthetic-test part of one split file against its own training part, for the
    models' split and for PCA+kNN's."""
    split = read_split(split_path)
    index = {str(name): i for i, name in enumerate(split["datasets"])}
    loaded = [_patterns(path) for path in preprocessed]
    meta, training_data = split["meta"], Path(split_path).parent.name  # splits/<training data>/<configuration>_seed<N>.npz
    rows = []
    for key, (who, test_part) in SPLIT_PARTS.items():
        test = np.flatnonzero(split[key] == test_part)
        chosen = test[_sample(len(test), sample, f"{Path(split_path).stem} {key}")]
        tests, trains = [], []
        for attrs, patterns, scan_cols in loaded:
            if attrs["name"] not in index:
                continue
            mine = split["dataset_index"] == index[attrs["name"]]
            flat = split["row"] * scan_cols + split["col"]
            tests.append(patterns[flat[chosen[mine[chosen]]]])
            trains.append(patterns[flat[mine & (split[key] == TRAIN)]])
        samples = np.concatenate(tests) if tests else np.zeros((0, 1))
        distances = nearest_rms(samples, np.concatenate(trains)) if len(samples) else np.zeros(0)
        label = f"synthetic test ({who}{meta['configuration']}, seed {meta['seed']}" + (f", {training_data} data)" if training_data != "base" else ")")
        rows.append({"set": label, "role": "synthetic test part", "compared_with": "its training part", **_verdict(distances, [])})
    return rows


COLUMNS = ["set", "role", "compared_with", "same_content_as", "sampled", "exact_copies", "near_copies", "median_rms", "independent"]


def write_leakage_tables(rows: list[dict], out_md, out_csv) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_text_atomically(out_csv, frame.to_csv(index=False, na_rep="nan"))
    lines = [
        f"Exact copy: RMS difference < {EXACT_RMS:g} of the [0, 1] range (float noise); near copy: < {NEAR_RMS:g} "
        f"(the same crystal at an equivalent position). A set is independent with no whole-set copy and at most "
        f"{100 * NEAR_FRACTION_ALLOWED:g} % near copies.",
        "",
        "| Set | Role | Compared with | Same content as | Sampled | Exact copies (%) | Near copies (%) | Median RMS | Independent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in frame.itertuples():
        lines.append(f"| {r.set} | {r.role} | {r.compared_with} | {r.same_content_as or '-'} | {r.sampled} | {100 * r.exact_copies:.1f} | "
                     f"{100 * r.near_copies:.1f} | {r.median_rms:.2e} | {'yes' if r.independent else '**no**'} |")
    write_text_atomically(out_md, "\n".join(lines) + "\n")


def dependent_sets(leakage_csv) -> set[str]:
    """Names of the evaluated sets that are not independent of training ("Synthetic test" when a
    split's test part is not); an experiment-like set inherits its clean source's verdict."""
    import pandas as pd

    frame = pd.read_csv(leakage_csv, keep_default_na=False, na_values=["nan"])
    bad = set(frame.loc[~frame["independent"].astype(bool), "set"])
    return {"Synthetic test" if name.startswith("synthetic test") else name for name in bad}
