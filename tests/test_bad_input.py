"""Bad input never becomes a wrong answer: one case per row, through the command line (and
`snakemake -n` for configs). Each case asserts one line naming the file or key and the fix, a
non-zero exit, and a folder left exactly as it was (nothing half-written, nothing overwritten)."""

import hashlib
import json
import re
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml

from polarmap import io
from polarmap.cli import main
from polarmap.models import PolarizationModel
from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
from polarmap.training import TrainSettings
from test_io import attrs
from test_preprocessing import disc

ROOT = Path(__file__).resolve().parents[1]


def scan(shape=(4, 4), size=48):
    """Bright-field discs moving across a 4x4 scan: plausible raw intensities."""
    return np.stack([[disc(size, centre=(24 + 0.3 * r, 24 - 0.2 * c), radius=6) * 900 + 2 for c in range(shape[1])] for r in range(shape[0])])


def save_model(path, input_px=32, **changes):
    settings = {**asdict(TrainSettings()), **changes.pop("settings", {})}
    model = PolarizationModel("conv", "classification", input_px)
    payload = {"state_dict": model.state_dict(), "settings": json.dumps(settings, sort_keys=True, default=list), "input_px": input_px, **changes}
    torch.save(payload, path)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid raw set, its preprocessed set (32 px crops) and a model that takes 32 px crops."""
    folder = tmp_path_factory.mktemp("good")
    io.write_dataset(folder / "raw.h5", scan(), np.zeros((4, 4), np.int8), attrs(name="raw"))
    preprocess_dataset(folder / "raw.h5", folder / "pre.h5", PreprocessSettings(crop_px=32, rows_per_block=2), False, progress=False)
    preprocess_dataset(folder / "raw.h5", folder / "pre24.h5", PreprocessSettings(crop_px=24, rows_per_block=2), False, progress=False)
    save_model(folder / "model.pt")
    return folder


def copy(good, tmp, name):
    (tmp / name).write_bytes((good / name).read_bytes())
    return tmp / name


def edit(path, change):
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def replace_dataset(f, name, data):
    del f[name]
    f[name] = data


def truncated(good, tmp):
    data = (good / "raw.h5").read_bytes()
    (tmp / "cut.h5").write_bytes(data[: len(data) // 2])
    return ["info", str(tmp / "cut.h5")]


def raw_with(change):
    def build(good, tmp):
        return ["preprocess", "--source", str(edit(copy(good, tmp, "raw.h5"), change)), "--out", str(tmp / "out.h5"), "--crop-px", "32"]
    return build


def pixel(value, where=(1, 2, 3, 3)):
    def change(f):
        f["patterns"][where] = value
    return change


def predict_with(model_change=None, data="pre.h5"):
    def build(good, tmp):
        model = copy(good, tmp, "model.pt")
        if model_change:
            model_change(model)
        return ["predict", str(model), str(good / data), "--out", str(tmp / "out.npz")]
    return build


def nan_preprocessed(good, tmp):
    data = edit(copy(good, tmp, "pre.h5"), pixel(np.nan, (2, 1, 5, 5)))
    return ["predict", str(good / "model.pt"), str(data), "--out", str(tmp / "out.npz")]


def check_config(text):
    def build(good, tmp):
        (tmp / "study.yaml").write_text(text)
        return ["check-config", str(tmp / "study.yaml"), "--base", str(ROOT / "config.yaml")]
    return build


CASES = {
    "truncated file": (truncated, r"cut\.h5: .*(truncated|cannot be read)"),
    "empty file": (lambda good, tmp: ["info", str((tmp / "empty.h5").touch() or tmp / "empty.h5")], r"empty\.h5: not a readable HDF5 file"),
    "not a data set": (lambda good, tmp: ["info", str(edit(copy(good, tmp, "raw.h5"), lambda f: f.attrs.__delitem__("format")))],
                       r"raw\.h5: not a polarmap-4dstem data set"),
    "missing attribute": (lambda good, tmp: ["info", str(edit(copy(good, tmp, "raw.h5"), lambda f: f.attrs.__delitem__("energy_kev")))],
                          r"raw\.h5: missing attributes \['energy_kev'\]"),
    "NaN pattern": (raw_with(pixel(np.nan)), r"raw\.h5: NaN or infinite intensities \(scan row 1, column 2\)"),
    "infinite pattern": (raw_with(pixel(np.inf)), r"raw\.h5: NaN or infinite intensities"),
    "dark level subtracted (negative)": (raw_with(lambda f: f["patterns"].write_direct(f["patterns"][()] - 5)), r"raw\.h5: a background below zero"),
    "dark level subtracted beyond the signal": (raw_with(lambda f: f["patterns"].write_direct(f["patterns"][()] - 50)),
                                                r"raw\.h5: a pattern without positive total intensity \(scan row 0, column 0\)"),
    "all-zero pattern": (raw_with(pixel(0.0, (3, 0))), r"raw\.h5: a pattern without positive total intensity \(scan row 3, column 0\)"),
    "complex patterns": (raw_with(lambda f: replace_dataset(f, "patterns", scan().astype(np.complex64))), r"raw\.h5: /patterns are complex64, not real"),
    "float labels": (raw_with(lambda f: replace_dataset(f, "labels", np.zeros((4, 4), np.float32))), r"raw\.h5: /labels are float32; class indices must be integers"),
    "label out of range": (raw_with(lambda f: f["labels"].__setitem__((0, 0), 9)), r"raw\.h5: /labels holds values outside -1\.\.7"),
    "unknown class name": (raw_with(lambda f: f.attrs.__setitem__("classes", '["XY"]')), r"raw\.h5: unknown class 'XY'"),
    "3-D patterns": (raw_with(lambda f: replace_dataset(f, "patterns", scan().reshape(16, 48, 48))), r"raw\.h5: /patterns must be 4-D"),
    "labels of another scan shape": (raw_with(lambda f: replace_dataset(f, "labels", np.zeros((3, 4), np.int8))), r"raw\.h5: /labels shape \(3, 4\) does not match"),
    "output over its source": (lambda good, tmp: ["preprocess", "--source", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "raw.h5")],
                               r"raw\.h5: is the input file itself"),
    "negative crop": (lambda good, tmp: ["preprocess", "--source", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "o.h5"), "--crop-px", "-8"],
                      r"crop_px must be at least 4 pixels, got -8"),
    "crop larger than the pattern": (lambda good, tmp: ["preprocess", "--source", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "o.h5"), "--crop-px", "200"],
                                     r"200 px crop .* leaves the 48x48 detector"),
    "model and data of different crops": (predict_with(data="pre24.h5"), r"model\.pt takes 32x32 px crops, the data set has 24x24; preprocess it with --crop-px 32"),
    "bare tensor as a model": (predict_with(lambda p: torch.save(torch.zeros(3), p)), r"model\.pt: not a polarmap model"),
    "a weight missing": (predict_with(lambda p: save_model(p, state_dict={})), r"model\.pt: not a polarmap model \(.*Missing key"),
    "an unknown objective": (predict_with(lambda p: save_model(p, settings={"objective": "telepathy"})), r"model\.pt: not a polarmap model \(unknown objective 'telepathy'"),
    "truncated model": (predict_with(lambda p: p.write_bytes(p.read_bytes()[:5000])), r"model\.pt: not a readable polarmap model"),
    "no model": (lambda good, tmp: ["predict", str(tmp / "none.pt"), str(good / "pre.h5"), "--out", str(tmp / "o.npz")], r"none\.pt: no such model"),
    "NaN in a preprocessed set": (nan_preprocessed, r"pre\.h5: 1 patterns hold NaN or infinite values \(first at scan \(2, 1\)\)"),
    "crop larger than the simulated patterns": (check_config("preprocessing: {crop_px: 300}\n"), r"crop_px 300 is larger than the simulated 128x128 px patterns"),
    "split fractions summing to 1.5": (check_config("preprocessing: {split_fractions: [0.8, 0.4, 0.3]}\n"), r"split_fractions \[0\.8, 0\.4, 0\.3\] sums to 1\.5"),
    "a name used twice": (check_config("datasets: {tests: {train_RM: {polarization: RM, supercell: [2, 2, 5]}}}\n"), r"data set name 'train_RM' used twice \(training and test\)"),
    "a name that is a shell command": (check_config("datasets: {tests: {'x; rm -rf ~': {polarization: RM, supercell: [2, 2, 5]}}}\n"),
                                       r"invalid value for 'datasets\.tests': 'x; rm -rf ~' does not match"),
    "an unknown key": (check_config("trainig: {lr: 1}\n"), r"'trainig' was unexpected"),
    # valid alone (the schema's 256 px patterns), not over config.yaml (128 px), as Snakemake merges it
    "a preset checked with what it is merged over": (check_config("preprocessing: {crop_px: 200}\n"), r"crop_px 200 is larger than the simulated 128x128"),
    "an import over its own file": (lambda good, tmp: (tifffile.imwrite(tmp / "s.tif", scan().reshape(16, 48, 48)), ["import", str(tmp / "s.tif"), "--out", str(tmp / "s.tif")])[1],
                                    r"s\.tif: is the input file itself"),
    "a user's folder as the pseudopotential folder": (lambda good, tmp: ((tmp / "mine").mkdir(), (tmp / "mine/notes.txt").write_text("mine"), ["fetch-pseudopotentials", str(tmp / "mine")])[2],
                                                      r"mine: exists and holds other files; give a new or empty folder"),
}


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_a_failure_and_leaves_everything_as_it_was(good, tmp_path, capsys, case):
    build, message = CASES[case]
    argv = build(good, tmp_path)
    before, good_before = snapshot(tmp_path), snapshot(good)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"polarmap {argv[0]}: error: "), err
    assert re.search(message, err), err
    assert snapshot(tmp_path) == before and snapshot(good) == good_before


SNAKEMAKE_CASES = {
    "crop larger than the simulated patterns": ("preprocessing: {crop_px: 300}\n", "crop_px 300 is larger than the simulated 128x128 px patterns"),
    "split fractions summing to 1.5": ("preprocessing: {split_fractions: [0.8, 0.4, 0.3]}\n", "sums to 1.5"),
    "a name that is a shell command": ("datasets: {tests: {'a;b': {polarization: RM, supercell: [2, 2, 5]}}}\n", "'a;b' does not match"),
    "an unknown key": ("trainig: {lr: 1}\n", "'trainig' was unexpected"),
    "compare_with that is a shell command": ("evaluation: {compare_with: 'x; ls'}\n", "'x; ls' does not match"),
}


@pytest.mark.parametrize("case", SNAKEMAKE_CASES)
def test_a_bad_config_stops_the_dry_run_in_one_line(tmp_path, case):
    text, message = SNAKEMAKE_CASES[case]
    (tmp_path / "study.yaml").write_text(text)
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n", "--configfile", "study.yaml"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Config file config.yaml is extended")]
    assert len(lines) == 1 and lines[0].startswith("polarmap: config: ") and message in lines[0], result.stderr
    assert not (tmp_path / "results").exists()


def limited_file_size(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def simulate_job():
    from test_simulation_resume import job

    return job()


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """The command that simulates a small set, and the set it gives uninterrupted."""
    command = [sys.executable, "-m", "polarmap.cli", "simulate", "--settings", simulate_job(), "--quiet", "--out"]
    reference = tmp_path_factory.mktemp("reference") / "ref.h5"
    result = subprocess.run([*command, str(reference)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return command, reference


def test_a_full_disk_mid_simulation_is_one_line_and_the_rerun_is_whole(simulation, tmp_path):
    """A file-size limit stands in for a full disk. The failed run says so in one line and leaves
    no data set; the rerun (space freed) gives the same set as a run never interrupted."""
    command, reference = simulation
    failed = subprocess.run([*command, str(tmp_path / "cut.h5")], capture_output=True, text=True, preexec_fn=limited_file_size(120_000))
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "cut.h5: writing failed" in failed.stderr and "free disk space" in failed.stderr, failed.stderr
    assert not (tmp_path / "cut.h5").exists()
    rerun = subprocess.run([*command, str(tmp_path / "cut.h5")], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not (tmp_path / "cut.h5.partial").exists()
    with io.open_dataset(tmp_path / "cut.h5", check_values=True) as a, h5py.File(reference) as b:
        assert np.array_equal(a["patterns"][()], b["patterns"][()])


def test_a_partial_file_whose_counter_ran_ahead_of_its_data_resumes_from_the_data(simulation, tmp_path):
    """A failed write can leave the completed-row counter ahead of rows that never reached the
    file; those read as NaN (the fill value) and are simulated again, never kept as zeros."""
    command, reference = simulation
    partial = tmp_path / "cut.h5.partial"
    partial.write_bytes(reference.read_bytes())
    with h5py.File(partial, "r+") as f:
        f.attrs["rows_completed"] = 8
        data = f["patterns"][()]
        del f["patterns"]
        f.create_dataset("patterns", shape=data.shape, dtype="float32", chunks=(1, 1, *data.shape[2:]), fillvalue=np.nan)
        f["patterns"][:5] = data[:5]  # rows 5-7 never written
    rerun = subprocess.run([*command, str(tmp_path / "cut.h5")], capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming from scan row 5 of 8" in rerun.stderr, rerun.stderr
    with h5py.File(tmp_path / "cut.h5") as a, h5py.File(reference) as b:
        assert np.array_equal(a["patterns"][()], b["patterns"][()])


def test_a_full_disk_while_preprocessing_leaves_nothing_behind(good, tmp_path):
    source = copy(good, tmp_path, "raw.h5")
    result = subprocess.run([sys.executable, "-m", "polarmap.cli", "preprocess", "--source", str(source), "--out", str(tmp_path / "out" / "pre.h5"),
                             "--crop-px", "32"], capture_output=True, text=True, preexec_fn=limited_file_size(20_000))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("polarmap preprocess: error: ") and "pre.h5: writing failed" in last and "Traceback" not in result.stderr, result.stderr
    assert not list((tmp_path / "out").iterdir())
