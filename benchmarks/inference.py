"""Inference throughput of every predictor on a full 128x128 scan (16384 patterns of 64x64, the
paper's input), through `polarmap.predictors.load`, the code the `predict` rule runs.

    python benchmarks/inference.py [--device cpu|cuda] [--name inference] [--patterns 16384]

Models are untrained (throughput does not depend on the weights); PCA+kNN is fitted on 40000
patterns, about the paper's filtered training split. Each predictor runs in its own process so
that its peak memory is its own. Writes benchmarks/<name>.md and benchmarks/<name>.json.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PREDICTORS = ["conv-classification", "conv-classification (compiled)", "conv-regression", "conv-prototype",
              "vgg16-classification", "resnet50-classification", "pca_knn", "com"]


def child(predictor: str, n: int, device: str) -> dict:
    import torch

    from polarmap.predictors import load
    from polarmap.models import PcaKnn, PolarizationModel
    from polarmap.training import TrainSettings

    rng = np.random.default_rng(0)
    patterns = rng.random((n, 64, 64), dtype=np.float32)
    beam_shift = rng.normal(size=(n, 2))
    with tempfile.TemporaryDirectory() as tmp:
        path = "com"
        if predictor == "pca_knn":
            path = Path(tmp) / "model.npz"
            train = rng.random((40000, 64 * 64), dtype=np.float32)
            PcaKnn.fit(train, rng.integers(0, 8, 40000), 20, 5).save(path)
        elif predictor != "com":
            encoder, objective = predictor.split(" ")[0].split("-")
            model = PolarizationModel(encoder, objective, 64)
            if objective == "prototype":
                model.prototypes.normal_()
            settings = TrainSettings(encoder=encoder, objective=objective, device=device)
            path = Path(tmp) / "model.pt"
            torch.save({"state_dict": model.state_dict(), "settings": json.dumps(asdict(settings)), "input_px": 64}, path)
        predict = load(path, device=device, compile_model="compiled" in predictor).predict
        predict(patterns[:512], beam_shift[:512])  # warm-up (and compilation)
        start = time.perf_counter()
        predict(patterns, beam_shift)
        seconds = time.perf_counter() - start
    return {"predictor": predictor, "device": device, "patterns": n, "seconds": seconds, "patterns_per_s": n / seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--name", default="inference", help="output files benchmarks/<name>.md and .json")
    parser.add_argument("--patterns", type=int, default=128 * 128)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.patterns, args.device)))
        return
    import torch

    results = []
    for predictor in PREDICTORS:
        out = subprocess.run([sys.executable, __file__, "--child", predictor, "--patterns", str(args.patterns), "--device", args.device],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    machine = f"{platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"
    (HERE / f"{args.name}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = [
        f"Inference benchmark ({machine}; {args.patterns} patterns of 64x64, `polarmap.predictors.load` as in `polarmap predict`).",
        "",
        "| predictor | device | wall time | patterns/s | peak memory |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['predictor']} | {r['device']} | {r['seconds']:.1f} s | {r['patterns_per_s']:.0f} | {r['peak_rss_gb']:.2f} GB |" for r in results]
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
