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


def stack(tmp, name="s.tif"):
    tifffile.imwrite(tmp / name, scan().reshape(16, 48, 48).astype(np.float32))
    return tmp / name


def import_with(*options):
    return lambda good, tmp: ["import", str(stack(tmp)), "--scan-shape", "4", "4", "--out", str(tmp / "o.h5"), *options]


def ood_file(path, model, **changes):
    from polarmap.provenance import file_sha256

    arrays = {"class_means": np.zeros((8, 4)), "precision": np.eye(4), "threshold": np.array(1.0), "model_sha256": np.array(file_sha256(model))}
    np.savez(path, **{key: value for key, value in {**arrays, **changes}.items() if value is not None})
    return path


def predict_with_ood(**changes):
    def build(good, tmp):
        return ["predict", str(good / "model.pt"), str(good / "pre.h5"), "--out", str(tmp / "o.npz"), "--ood", str(ood_file(tmp / "ood.npz", good / "model.pt", **changes))]
    return build


def virtual_images_of(data="raw.h5", adf=("60", "150"), prepare=None):
    def build(good, tmp):
        source = copy(good, tmp, data)
        if prepare:
            edit(source, prepare)
        return ["virtual-images", str(source), "--out", str(tmp / "v.npz"), "--adf-mrad", *adf]
    return build


def virtual_npz(**images):
    def build(good, tmp):
        meta = json.dumps({"dataset_attrs": {"name": "v", "classes": ["RM"], "supercell": "2x2x50", "scan_step_angstrom": 0.5}})
        np.savez(tmp / "v.npz", **{"adf": np.ones((8, 8)), "com_mrad": np.zeros((8, 8, 2)), "meta": np.array(meta), **images})
        return ["predict-cells", "column_fit_adf", str(tmp / "v.npz"), "--out", str(tmp / "c.npz"), "--metrics", str(tmp / "c.json")]
    return build


def written(name, data):
    def build(good, tmp):
        (tmp / name).write_bytes(data)
        return ["import", str(tmp / name), "--scan-shape", "4", "4", "--out", str(tmp / "o.h5")]
    return build


def truncated_mib(keep_bytes):
    def build(good, tmp):
        from test_readers import write_mib

        write_mib(tmp / "full.mib", scan().reshape(16, 48, 48))
        (tmp / "cut.mib").write_bytes((tmp / "full.mib").read_bytes()[:keep_bytes])
        (tmp / "full.mib").unlink()
        return ["import", str(tmp / "cut.mib"), "--scan-shape", "4", "4", "--out", str(tmp / "o.h5")]
    return build


def hard_link(good, tmp):
    data = copy(good, tmp, "pre.h5")
    (tmp / "link.npz").hardlink_to(data)
    return ["predict", str(good / "model.pt"), str(data), "--out", str(tmp / "link.npz")]


def vacuum_of_another_detector(good, tmp):
    io.write_dataset(tmp / "vacuum.h5", scan(size=40), np.zeros((4, 4), np.int8), attrs(name="vacuum"))
    return ["preprocess", "--source", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "o.h5"), "--crop-px", "32", "--vacuum-reference", str(tmp / "vacuum.h5")]


def complex_hdf5(good, tmp):
    with h5py.File(tmp / "c.h5", "w") as f:
        f["frames"] = scan().astype(np.complex64)
    return ["import", str(tmp / "c.h5"), "--out", str(tmp / "o.h5")]


def nan_model(path):
    model = PolarizationModel("conv", "classification", 32)
    state = model.state_dict()
    next(value for value in state.values() if value.is_floating_point() and value.numel()).fill_(float("nan"))
    save_model(path, state_dict=state)


# no command writes, moves or deletes one of its inputs, or writes one output over another
CASES |= {
    "predict over its data set": (lambda good, tmp: ["predict", str(good / "model.pt"), str(copy(good, tmp, "pre.h5")), "--out", str(tmp / "pre.h5")],
                                  r"pre\.h5: is the input file itself \(--out and dataset\)"),
    "predict over a hard link of its data set": (hard_link, r"link\.npz: is the input file itself \(--out and dataset, .*pre\.h5 by another name\)"),
    "predict-many with one path for both outputs": (lambda good, tmp: ["predict-many", str(good / "model.pt"), str(good / "pre.h5"), "--out", str(tmp / "x"),
                                                                        "--metrics", str(tmp / "x")], r"x: given for two outputs \(--out and --metrics\)"),
    "map of a file named as one of its outputs": (lambda good, tmp: ((tmp / "out").mkdir(), ["map", str(copy(good, tmp, "raw.h5").rename(tmp / "out/preprocessed.h5")),
                                                                                             "--model", str(good / "model.pt"), "--out", str(tmp / "out")])[1],
                                                  r"out/preprocessed\.h5: is the input file itself \(--out and path\)"),
    "an output that is a folder": (lambda good, tmp: ((tmp / "outdir").mkdir(), ["preprocess", "--source", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "outdir")])[1],
                                   r"outdir: is a folder; give --out a file path"),
    "a map into a file": (lambda good, tmp: ["map", str(copy(good, tmp, "raw.h5")), "--out", str(copy(good, tmp, "pre.h5"))],
                          r"pre\.h5: is a file; give --out a folder \(the outputs are written into it\)"),
    "a map into its own input file": (lambda good, tmp: ["map", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "raw.h5")],
                                      r"raw\.h5: is a file; give --out a folder"),
    "an import into a folder": (lambda good, tmp: ((tmp / "outdir").mkdir(), ["import", str(stack(tmp)), "--scan-shape", "4", "4", "--out", str(tmp / "outdir")])[1],
                                r"outdir: is a folder; give --out a file path"),
}
# physical quantities outside what a microscope gives, never written into a data set
CASES |= {
    f"import {flag} {value}": (import_with(flag, value), rf"{flag}: {key} {re.escape(repr(float(value)))} is not a {what}")
    for flag, key, what, values in (
        ("--mrad-per-px", "detector_mrad_per_px", "detector sampling", ("-3", "nan", "inf", "1e9", "1e-9")),
        ("--energy-kev", "energy_kev", "beam energy", ("-200", "nan", "1e9", "0.001")),
        ("--semiangle-mrad", "semiangle_mrad", "probe semi-angle", ("-24", "nan", "1e6")),
        ("--scan-step-angstrom", "scan_step_angstrom", "scan step", ("-0.5", "nan")),
    )
    for value in values
}
CASES |= {
    f"preprocess --to-mrad-per-px {value}": (lambda good, tmp, value=value: ["preprocess", "--source", str(copy(good, tmp, "raw.h5")), "--out", str(tmp / "o.h5"),
                                                                             "--to-mrad-per-px", value], r"--to-mrad-per-px\): detector_mrad_per_px .* is not a detector sampling")
    for value in ("-3", "1e-6")
}
CASES |= {
    "a stored negative calibration": (raw_with(lambda f: f.attrs.__setitem__("detector_mrad_per_px", -3.15)), r"raw\.h5: stored detector_mrad_per_px -3\.15 is not a detector sampling"),
    "a stored calibration that is text": (lambda good, tmp: ["info", str(edit(copy(good, tmp, "raw.h5"), lambda f: f.attrs.__setitem__("energy_kev", "200 kV")))],
                                          r"raw\.h5: stored energy_kev '200 kV' is not a beam energy"),
    "complex frames in an HDF5 file": (complex_hdf5, r"c\.h5: its frames are complex64, not real intensities"),
}
# models, thresholds and references that cannot answer
CASES |= {
    "a model with NaN weights": (predict_with(nan_model), r"model\.pt: weight .* holds NaN or infinite values"),
    "a NaN threshold": (predict_with_ood(threshold=np.array(np.nan)), r"ood\.npz: its threshold or covariance is not finite"),
    "a threshold of another model": (predict_with_ood(model_sha256=np.array("0" * 64)), r"ood\.npz: calibrated for another model than .*model\.pt"),
    "a threshold that names no model": (predict_with_ood(model_sha256=None), r"ood\.npz: does not name the model it was calibrated for"),
    "a truncated threshold file": (lambda good, tmp: (ood_file(tmp / "ood.npz", good / "model.pt"), (tmp / "ood.npz").write_bytes((tmp / "ood.npz").read_bytes()[:300]),
                                                      ["predict", str(good / "model.pt"), str(good / "pre.h5"), "--out", str(tmp / "o.npz"), "--ood", str(tmp / "ood.npz")])[2],
                                   r"ood\.npz: not a readable out-of-distribution calibration"),
    "an empty model path": (lambda good, tmp: ["predict", "", str(good / "pre.h5"), "--out", str(tmp / "o.npz")], r"model: an empty path \(an unset variable\?\); no model given"),
    "a vacuum reference of another detector": (vacuum_of_another_detector, r"vacuum\.h5: 40x40 px frames for the 48x48 px frames of .*raw\.h5"),
}
# virtual images and per-cell predictors
CASES |= {
    "an ADF ring inside out": (virtual_images_of(adf=("150", "60")), r"ADF detector 150-60 mrad: give INNER OUTER with 0 <= INNER < OUTER"),
    "a negative ADF ring": (virtual_images_of(adf=("-5", "60")), r"ADF detector -5-60 mrad: give INNER OUTER"),
    "a NaN ADF ring": (virtual_images_of(adf=("nan", "60")), r"ADF detector nan-60 mrad: give INNER OUTER"),
    "an ADF ring beyond the detector": (virtual_images_of(adf=("5000", "6000")), r"raw\.h5: no detector pixel lies in the ADF ring 5000-6000 mrad; the detector reaches"),
    "an ADF ring between two pixels": (virtual_images_of(adf=("60", "60.001")), r"raw\.h5: no detector pixel lies in the ADF ring 60-60\.001 mrad"),
    "virtual images of NaN patterns": (virtual_images_of(prepare=pixel(np.nan)), r"raw\.h5: NaN or infinite intensities \(scan row 1, column 2\)"),
    "virtual images of a preprocessed set": (virtual_images_of(data="pre.h5"), r"pre\.h5: a preprocessed set \(cropped and normalised\); virtual imaging needs the raw patterns"),
    "a 3-D virtual image": (virtual_npz(adf=np.ones((8, 8, 3))), r"v\.npz: its adf is 8x8x3, not 8x8 or .*: virtual images are 2-D|v\.npz: its .* is .*virtual images are 2-D"),
    "a NaN virtual image": (virtual_npz(adf=np.full((8, 8), np.nan)), r"v\.npz: its adf holds NaN or infinite values"),
    "a truncated virtual-images file": (lambda good, tmp: (virtual_npz()(good, tmp), (tmp / "v.npz").write_bytes((tmp / "v.npz").read_bytes()[:200]),
                                                           ["predict-cells", "column_fit_adf", str(tmp / "v.npz"), "--out", str(tmp / "c.npz"), "--metrics", str(tmp / "c.json")])[2],
                                        r"v\.npz: not a readable virtual-images file"),
}
# configs: YAML as the spec says, finite numbers, a mapping at the top
CASES |= {
    "a key given twice": (check_config("study: a\nstudy: b\n"), r"study\.yaml: not valid YAML \(line 2\): key 'study' given twice \(lines 1 and 2\); keep one"),
    "a NaN learning rate": (check_config("training: {lr: .nan}\n"), r"invalid value for 'training\.lr': nan is not a finite number"),
    "a top-level list": (check_config("- study: a\n"), r"study\.yaml: holds a YAML list, not a mapping"),
    "a beam energy in volts": (check_config("simulation: {energy_kev: 200000}\n"), r"invalid value for 'simulation\.energy_kev': energy_kev 200000 is not a beam energy"),
}
# damaged files of the formats users hold: one line, never a traceback or a huge allocation
CASES |= {
    "a garbage TIFF": (written("g.tif", b"this is not a tiff file at all" * 10), r"g\.tif: unreadable TIFF"),
    "a truncated TIFF": (lambda good, tmp: ["import", str((tmp / "t.tif").write_bytes(stack(tmp, "full.tif").read_bytes()[:3000]) and tmp / "t.tif"),
                                            "--scan-shape", "4", "4", "--out", str(tmp / "o.h5")], r"t\.tif: .*(unreadable|damaged|cannot be read)"),
    "an empty DM4": (written("e.dm4", b""), r"e\.dm4: not a readable digitalmicrograph file"),
    "a fake DM4 header": (written("f.dm4", b"\x00\x00\x00\x04" + b"\x00" * 12 + bytes(range(256)) * 4), r"f\.dm4: not a readable digitalmicrograph file"),
    "a .mib of its header only": (truncated_mib(384), r"cut\.mib: 0 frames do not fill one scan row of 4"),
    "a .mib of one frame": (truncated_mib(384 + 48 * 48 * 2), r"cut\.mib: a 2-D 48x48 image, not a 4D-STEM scan"),
    "a garbage blockfile": (written("g.blo", bytes(range(256)) * 8), r"g\.blo: its header declares a \d+x\d+ scan .* the file holds 2,048 bytes"),
    "a blockfile shorter than its header": (written("s.blo", b"IMGBLO"), r"s\.blo: 6 bytes, shorter than a blockfile header"),
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
    "both modes and a study to compare with": ("evaluation: {both_modes: true, compare_with: results/x}\n",
                                               "evaluation.both_modes runs the other mode itself: leave evaluation.compare_with empty"),
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


def subcommands():
    from polarmap.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if a.dest == "command").choices


OUTPUT_DESTS = {"out", "out_dir", "summary", "record", "metrics", "figure", "out_md", "out_csv", "out_table", "out_figure"}


def argv_of(command, values: dict) -> list[str]:
    """A command line of `command` with `values` for those arguments, a placeholder for every
    other required one (check_files runs before any argument is read)."""
    argv = [command]
    for action in subcommands()[command]._actions:
        if action.dest == "help":
            continue
        value = values.get(action.dest)
        if value is None and not action.required:
            continue
        value = str(value) if value is not None else (action.choices[0] if action.choices else "x")
        argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


def test_every_command_declares_what_it_reads_and_writes():
    from polarmap.cli import COMMANDS

    assert set(COMMANDS) == set(subcommands())
    for command, declared in COMMANDS.items():
        dests = {action.dest for action in subcommands()[command]._actions}
        assert set(declared.reads) <= dests, (command, set(declared.reads) - dests)


def output_input_pairs():
    from polarmap.cli import COMMANDS

    return [(command, dest) for command, declared in COMMANDS.items() for dest in declared.reads]


@pytest.mark.parametrize("command, input_dest", output_input_pairs())
def test_no_command_writes_over_one_of_its_inputs(tmp_path, capsys, command, input_dest):
    """Every output of every command, in turn, named as one of its inputs: refused in one line
    before any work, the input byte for byte as it was."""
    from polarmap.cli import build_parser, command_files

    dests = {action.dest for action in subcommands()[command]._actions}
    values = {dest: tmp_path / "outputs" / dest for dest in OUTPUT_DESTS & dests}
    outputs = command_files(build_parser().parse_args(argv_of(command, values)))[1]
    assert outputs or command in ("info", "qstem", "fetch-weights", "fetch-pseudopotentials", "check-config"), command
    for _, output in outputs:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"the user's own file")
        before = snapshot(tmp_path)
        code = main(argv_of(command, {**values, input_dest: output}))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"{output}: is the input file itself" in err, (command, input_dest, output, err)
        assert snapshot(tmp_path) == before
        output.unlink()


def failing_second_output(good, tmp):
    """The second output's folder is a file: the command fails after writing its first output."""
    (tmp / "file").write_text("not a folder")
    return tmp / "file" / "second"


PARTIAL_CASES = {
    "virtual images whose figure cannot be written": lambda good, tmp: ["virtual-images", str(good / "raw.h5"), "--out", str(tmp / "v.npz"),
                                                                         "--figure", str(failing_second_output(good, tmp))],
    "predictions whose metrics cannot be written": lambda good, tmp: ["predict-many", str(good / "model.pt"), str(good / "pre.h5"), "--out", str(tmp / "p.npz"),
                                                                       "--metrics", str(failing_second_output(good, tmp))],
    "a map with a damaged --ood": lambda good, tmp: (save_model(tmp / "m.pt", sampling=json.dumps({"detector_mrad_per_px": 1.0, "crop_px": 32, "semiangle_mrad": 24})),
                                                     (tmp / "bad.npz").write_bytes(b"PK not a zip"),
                                                     ["map", str(good / "raw.h5"), "--model", str(tmp / "m.pt"), "--ood", str(tmp / "bad.npz"), "--out", str(tmp / "out"),
                                                      "--format", "hdf5", "--mrad-per-px", "3"])[2],
}


@pytest.mark.parametrize("case", PARTIAL_CASES)
def test_a_failed_command_leaves_none_of_its_outputs(good, tmp_path, capsys, case):
    argv = PARTIAL_CASES[case](good, tmp_path)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"polarmap {argv[0]}: error: "), err
    assert {name: digest for name, digest in snapshot(tmp_path).items() if name != "out"} == before


def test_a_broken_config_yaml_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("study: [unclosed\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("polarmap: config: config.yaml: not valid YAML (line 2)"), result.stderr


def test_a_key_given_twice_stops_the_dry_run(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (tmp_path / "study.yaml").write_text("study: a\nstudy: b\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n", "--configfile", "study.yaml"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("polarmap: "), result.stderr
    assert "study.yaml: not valid YAML (line 2): key 'study' given twice (lines 1 and 2); keep one" in result.stderr
