"""A killed simulation resumes from its partial file and ends identical to an uninterrupted one."""

import json
import re
import subprocess
import sys

import h5py
import numpy as np

from polarmap.config import dataset_job_settings, validate_config


def job(scan_px=8):
    config = validate_config({
        "simulation": {"gpts_per_cell": 16, "scan_px": scan_px, "rows_per_block": 1, "method": "multislice"},
        "preprocessing": {"crop_px": 16},
        "datasets": {"training": {"supercell": [2, 2, 30], "classes": ["LD"]}},
    })
    return json.dumps(dataset_job_settings(config, "train_LD"))


def run(out, settings, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "polarmap.cli", "simulate", "--settings", settings, "--out", str(out)],
        stderr=subprocess.PIPE, text=True, **kwargs,
    )


def test_killed_simulation_resumes_and_matches(tmp_path):
    settings = job()
    reference = run(tmp_path / "ref.h5", settings)
    assert reference.wait(timeout=300) == 0

    out = tmp_path / "cut.h5"
    partial = tmp_path / "cut.h5.partial"
    first = run(out, settings)
    # tqdm counts a block once it is flushed, but skips redraws closer than 0.1 s apart, so wait
    # for any count from 3 on rather than for "3/8" itself.
    progress = ""
    while first.poll() is None and not any(int(done) >= 3 for done in re.findall(r"(\d+)/8", progress)):
        progress += first.stderr.read(1)
    first.kill()
    first.wait()
    assert not out.exists()
    with h5py.File(partial, "r") as f:
        rows_done = int(f.attrs["rows_completed"])
    assert 3 <= rows_done < 8

    second = run(out, settings)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert f"resuming from scan row {rows_done} of 8" in stderr
    assert not partial.exists()
    with h5py.File(out) as a, h5py.File(tmp_path / "ref.h5") as b:
        assert np.array_equal(a["patterns"][()], b["patterns"][()])
        assert a.attrs["config_hash"] == b.attrs["config_hash"]
