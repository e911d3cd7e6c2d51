"""Training and inference throughput of each encoder at the paper's input (64x64, batch 128),
on the CPU (and on CUDA when present), with the share of the input pipeline (augmentation).

    python benchmarks/training.py [--steps 5] [--device cuda --name training_gpu] [--epoch-patterns 16384]

Each encoder runs in its own process so that its peak memory is its own. Then one real
`polarmap.training.train` epoch of the Conv on synthetic 64x64 sets (augmented), with and without
the augmenting worker processes, shows whether the input pipeline limits training. Writes
benchmarks/<name>.md and benchmarks/<name>.json.
"""

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(encoder: str, steps: int, device: str, compiled: bool) -> dict:
    import torch

    from polarmap.models import PolarizationModel
    from polarmap.augmentation import AugmentationSettings, augmentation_pipeline

    torch.manual_seed(0)
    dev = torch.device(device)
    model = PolarizationModel(encoder, "classification", 64).to(dev)
    layout = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(memory_format=layout)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, fused=True)  # as polarmap.training
    rng = np.random.default_rng(0)
    images = rng.random((128, 1, 64, 64), dtype=np.float32)
    labels = torch.from_numpy(rng.integers(0, 8, 128)).to(dev)
    pipeline = augmentation_pipeline(AugmentationSettings(), 0)

    def augment():
        return np.stack([pipeline(image=image[0])["image"][None] for image in images])

    def step(batch):
        x = torch.from_numpy(batch).to(dev).contiguous(memory_format=layout)
        with torch.autocast(dev.type, enabled=dev.type == "cuda"):
            loss = model.objective.loss(forward(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(images)  # warm-up (and compilation)
    augment_s, step_s = [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = augment()
        augment_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        step(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - start)
    model.eval()
    x = torch.from_numpy(images).to(dev).contiguous(memory_format=layout)
    with torch.inference_mode():
        forward(x)
        start = time.perf_counter()
        for _ in range(steps):
            forward(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        infer_s = (time.perf_counter() - start) / steps
    augment_mean, step_mean = float(np.mean(augment_s)), float(np.mean(step_s))
    return {
        "encoder": encoder + (" (compiled)" if compiled else ""), "device": device,
        "train_patterns_per_s": 128 / (augment_mean + step_mean),
        "train_step_patterns_per_s": 128 / step_mean,
        "input_pipeline_share": augment_mean / (augment_mean + step_mean),
        "inference_patterns_per_s": 128 / infer_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3 if dev.type == "cuda" else 0.0,
    }


def real_epochs(device: str, n_patterns: int) -> list[dict]:
    """Patterns/s of the second of two real training epochs (the first includes start-up)."""
    import tempfile

    from polarmap import io
    from polarmap.classes import CLASS_NAMES
    from polarmap.preprocessing import PreprocessSettings, preprocess_dataset
    from polarmap.splits import SplitSettings, make_split
    from polarmap.training import TrainSettings, default_workers, train

    import torch

    side = int(np.sqrt(n_patterns / len(CLASS_NAMES)))
    rng = np.random.default_rng(0)
    attrs = dict(classes=["RM"], class_names=list(CLASS_NAMES), thickness_nm=20.0, supercell="2x2x50", energy_kev=200.0,
                 semiangle_mrad=24.0, detector_mrad_per_px=3.15, scan_step_angstrom=0.06, source="benchmark")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preprocessed = []
        for k, name in enumerate(CLASS_NAMES):
            patterns = rng.random((side, side, 72, 72), dtype=np.float32)
            io.write_dataset(tmp / f"{name}.h5", patterns, np.full((side, side), k, np.int8), {**attrs, "name": name, "classes": [name]})
            preprocess_dataset(tmp / f"{name}.h5", tmp / f"p_{name}.h5", PreprocessSettings(crop_px=64), True, progress=False)
            preprocessed.append(tmp / f"p_{name}.h5")
        make_split(preprocessed, tmp / "split.npz", "augmentation", 0, SplitSettings(), SplitSettings(fractions=(0.9, 0.1)))
        settings = TrainSettings(encoder="conv", configuration="augmentation", max_epochs=2, patience=2, device=device)
        for workers in sorted({0, default_workers(torch.device(device))}):
            train(tmp / "split.npz", preprocessed, tmp / f"w{workers}", settings, progress=False, workers=workers)
            with open(tmp / f"w{workers}/metrics.csv") as f:
                last = list(csv.DictReader(f))[-1]
            results.append({"workers": workers, "patterns_per_s": float(last["patterns_per_s"])})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--name", default="training", help="output files benchmarks/<name>.md and .json")
    parser.add_argument("--epoch-patterns", type=int, default=16384, help="synthetic patterns for the real training epochs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.steps, args.child[1], args.child[2] == "compiled")))
        return
    import torch

    results = []
    for encoder, compiled in (("conv", "eager"), ("conv", "compiled"), ("vgg16", "eager"), ("resnet50", "eager")):
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", encoder, args.device, compiled],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    epochs = real_epochs(args.device, args.epoch_patterns)
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}", "results": results, "real_epochs": epochs}
    (HERE / f"{args.name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = [
        f"Training benchmark ({figures['machine']}; 64x64 inputs, batch 128, classification, with the paper's augmentation).",
        "",
        "| encoder | device | training patterns/s (with augmentation) | training step alone | input pipeline share | inference patterns/s | peak memory | peak GPU memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['encoder']} | {r['device']} | {r['train_patterns_per_s']:.0f} | {r['train_step_patterns_per_s']:.0f} | "
            f"{100 * r['input_pipeline_share']:.0f} % | {r['inference_patterns_per_s']:.0f} | {r['peak_rss_gb']:.2f} GB | {r['peak_gpu_gb']:.2f} GB |"
        )
    for name in ("conv", "conv (compiled)"):
        conv = next(r for r in results if r["encoder"] == name)
        lines.append(f"\n{name} inference of a 16384-pattern set on {args.device}: {16384 / conv['inference_patterns_per_s']:.1f} s.")
    lines.append(f"\nReal training epochs (`polarmap.training.train`, Conv, augmented, ~{args.epoch_patterns} synthetic patterns, {args.device}):")
    for e in epochs:
        lines.append(f"- {e['workers']} augmenting worker processes: {e['patterns_per_s']:.0f} patterns/s")
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
