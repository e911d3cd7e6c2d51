"""Per-seed training of one (encoder, objective, preprocessing configuration, pretraining) on the
preprocessed training sets and a split file; PCA + kNN on the same data.

Deterministic on the CPU: the model is initialised from the seed, and every epoch's shuffling
and augmentation stream derive from (seed, epoch), so a run resumed from its checkpoint ends
exactly where an uninterrupted one does.
"""

import copy
import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from polarmap import io, predictors
from polarmap.atomic import save_npz_atomically
from polarmap.models import (
    LEARNED_MIN_VALIDATION_ACCURACY, N_CLASSES, PcaKnn, PolarizationModel, class_prototypes, flush_subnormals, resolve_device, save_model_file,
)
from polarmap.ood import KNOWN_QUANTILE, fit_ood
from polarmap.augmentation import AugmentationSettings, DomainRandomisationSettings, augmentation_pipeline, augmenter
from polarmap.preprocessing import CONFIGURATIONS
from polarmap.seeds import derived_seed
from polarmap.splits import read_split
from polarmap.provenance import config_hash, file_sha256, settings_from_json, write_record

TRAIN, VALIDATION, TEST = 0, 1, 2
# A model whose validation accuracy stays below twice chance (8 classes) did not learn: it is
# marked so in every table and map, never reported as a result.


@dataclass(frozen=True)
class TrainSettings:
    encoder: str = "conv"
    objective: str = "classification"
    configuration: str = "none"
    pretrained: str = "scratch"
    seed: int = 888
    mode: str = "corrected"
    lr: float = 2e-4
    weight_decay: float = 0.0  # the published code: 1e-4
    batch_size: int = 128
    max_epochs: int = 20
    patience: int = 5
    # what early stopping watches and the kept epoch is best at: "val_loss" (the paper) or
    # "val_accuracy" (a model can grow overconfident, its validation loss rising, while its
    # validation accuracy still rises)
    early_stopping: str = "val_loss"
    device: str = "auto"  # "auto": CUDA when present (mixed precision there), else CPU
    # Per-pixel standardisation from the training split, on top of the paper's min-max: without
    # it the Conv encoder sits at chance for hundreds of steps (README); the published code: off.
    standardize_inputs: bool = True
    compile: bool = False  # torch.compile the training step: ~10 s once, then ~25 % faster on a CPU
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)
    augmentation_kind: str = "paper"  # or "domain_randomisation" (issue 9)
    domain_randomisation: DomainRandomisationSettings = field(default_factory=DomainRandomisationSettings)
    training_data: str = "base"  # recorded only: the split file holds the patterns ("base" or "diverse")

    def __post_init__(self):
        if self.early_stopping not in ("val_loss", "val_accuracy"):
            raise ValueError(f"early_stopping must be 'val_loss' or 'val_accuracy', got {self.early_stopping!r}")
        if self.configuration not in CONFIGURATIONS:
            raise ValueError(f"unknown configuration {self.configuration!r}; use one of {', '.join(CONFIGURATIONS)}")

    @classmethod
    def from_job(cls, job: dict) -> "TrainSettings":
        """The settings of a training job as `config.training_jobs` makes them (plain JSON values)."""
        return cls(**{**job, "augmentation": settings_from_json(AugmentationSettings, job["augmentation"]),
                      "domain_randomisation": settings_from_json(DomainRandomisationSettings, job["domain_randomisation"])})


SAMPLING_KEYS = ("detector_mrad_per_px", "energy_kev", "semiangle_mrad")


def load_training_data(split_path, preprocessed) -> dict:
    """Patterns and labels of every split part, in memory (float32, 1 channel), and the sampling
    they share (recorded with every model: what data must be resampled to before it meets it),
    with the thicknesses of the training sets."""
    split = read_split(split_path)
    index = {str(name): i for i, name in enumerate(split["datasets"])}
    images, found, sampling, thicknesses = None, set(), None, set()
    for path in preprocessed:
        with io.open_dataset(path) as f:
            attrs = io.read_attrs(f)
            name = attrs["name"]
            if name not in index:
                continue
            patterns = f["patterns"][()]
        this = {"crop_px": int(patterns.shape[-1]), **{key: float(attrs[key]) for key in SAMPLING_KEYS}}
        if sampling is not None and not all(np.isclose(this[key], sampling[key], rtol=1e-3) for key in this):
            raise ValueError(f"{path}: sampled at {this}, the other training sets at {sampling}; preprocess every training set alike")
        sampling = this
        if images is None:
            images = np.empty((split["label"].size, 1, *patterns.shape[2:]), np.float32)
        members = np.flatnonzero(split["dataset_index"] == index[name])
        if (split["part"][members] == TRAIN).any() and np.isfinite(float(attrs["thickness_nm"])):
            thicknesses.add(round(float(attrs["thickness_nm"]), 3))
        images[members, 0] = patterns[split["row"][members], split["col"][members]]
        found.add(name)
    missing = [name for name in index if name not in found]
    if missing:
        raise ValueError(f"{split_path}: needs the preprocessed set {missing[0]!r}, not given")
    # what a map checks a scan's thickness against (polarmap.pacbed)
    sampling["training_thickness_nm"] = sorted(thicknesses)
    return {"images": images, "labels": split["label"].astype(np.int64), "part": split["part"], "sampling": sampling}


def _batches(n: int, batch_size: int, order=None):
    order = np.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


class _AugmentedBatches(torch.utils.data.Dataset):
    """Batch i of an epoch, augmented with a pipeline seeded by (seed, epoch, i): the result does
    not depend on how many worker processes make the batches. `augmentation`: None or the
    settings (kind, paper settings, domain randomisation settings) of `augmenter`."""

    def __init__(self, images, batches, augmentation, seed_keys):
        self.images, self.batches, self.augmentation, self.seed_keys = images, batches, augmentation, seed_keys

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        images = self.images[self.batches[i]]
        if self.augmentation is not None:
            augment = augmenter(*self.augmentation, derived_seed(*self.seed_keys, i))
            images = np.stack([augment(image[0])[None] for image in images])
        return np.ascontiguousarray(images)


def default_workers(device: torch.device) -> int:
    """Processes that augment batches: none on the CPU (augmentation is ~3 % of a step there and
    workers would compete with it for cores); on a GPU all but one of the job's cores, since
    one core augments ~8600 patterns/s and the GPU trains the Conv at ~26000."""
    return 0 if device.type == "cpu" else min(8, max(1, len(os.sched_getaffinity(0)) - 1))


def _evaluate(model, images, labels, batch_size, device) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, outputs and predictions over a part (no augmentation, eval mode)."""
    model.eval()
    total, outputs = 0.0, []
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for batch in _batches(len(labels), batch_size):
            x = torch.from_numpy(images[batch]).to(device)
            y = torch.from_numpy(labels[batch]).to(device)
            out = model(x).float()
            total += float(model.objective.loss(out, y)) * len(batch)
            outputs.append(out.cpu())
    outputs = torch.cat(outputs) if outputs else torch.zeros(0, model.objective.out_features)
    return total / max(len(labels), 1), outputs


def train(split_path, preprocessed, out_dir, settings: TrainSettings, progress: bool = True, workers: int | None = None) -> dict:
    """Train one model; writes model.pt, metrics.csv and record.json into `out_dir`, with a
    checkpoint.pt after every epoch from which an interrupted run resumes. `workers`: processes
    that augment batches (default: `default_workers`); the result does not depend on it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_json = json.dumps(asdict(settings), sort_keys=True)
    data = load_training_data(split_path, preprocessed)
    parts = {part: np.flatnonzero(data["part"] == part) for part in (TRAIN, VALIDATION, TEST)}
    if len(parts[TRAIN]) == 0 or len(parts[VALIDATION]) == 0:
        raise ValueError(f"{split_path}: empty training or validation split")
    train_x, train_y = data["images"][parts[TRAIN]], data["labels"][parts[TRAIN]]
    val_x, val_y = data["images"][parts[VALIDATION]], data["labels"][parts[VALIDATION]]
    augment, _ = CONFIGURATIONS[settings.configuration]
    device = resolve_device(settings.device)
    workers = default_workers(device) if workers is None else workers
    torch.manual_seed(settings.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    flush_subnormals()
    model = PolarizationModel(settings.encoder, settings.objective, train_x.shape[-1], settings.pretrained, settings.mode).to(device)
    if settings.standardize_inputs:
        model.input_mean.copy_(torch.from_numpy(train_x.mean(axis=0, keepdims=True)))
        model.input_std.copy_(torch.from_numpy(train_x.std(axis=0, keepdims=True) + 1e-3))
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    # one fused kernel over all parameters: eager Conv steps ~9 % faster on 2 CPU cores (benchmarks/training.md)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    forward = torch.compile(model) if settings.compile else model  # shares the parameters of `model`
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")

    # a checkpoint resumes only the same training on the same data: keyed on the content of the
    # split and of every training set, so re-simulated data start afresh
    inputs_hash = config_hash([file_sha256(path) for path in (split_path, *preprocessed)])
    checkpoint_path = out_dir / "checkpoint.pt"
    state = {"epoch": -1, "best_score": float("inf"), "best_epoch": -1, "wait": 0, "history": [], "best_model": None}
    saved = _resumable_checkpoint(checkpoint_path, device, settings_json, inputs_hash)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {key: saved[key] for key in state}
        print(f"resuming after epoch {state['epoch'] + 1} from {checkpoint_path}", flush=True)

    started = time.perf_counter()
    for epoch in range(state["epoch"] + 1, settings.max_epochs):
        if state["wait"] >= settings.patience:
            break
        generator = torch.Generator().manual_seed(derived_seed(settings.seed, epoch))
        order = torch.randperm(len(train_y), generator=generator).numpy()
        batches = list(_batches(len(train_y), settings.batch_size, order))
        augmentation = (settings.augmentation_kind, settings.augmentation, settings.domain_randomisation) if augment else None
        batch_images = _AugmentedBatches(train_x, batches, augmentation, (settings.seed, epoch))
        loader = torch.utils.data.DataLoader(
            batch_images, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
            multiprocessing_context="fork" if workers else None,  # workers share the images, not copy them
            prefetch_factor=4 if workers else None,
        )
        model.train()
        epoch_start = time.perf_counter()
        train_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)  # summed on the device: no sync per step
        # prototype models: class means of this epoch's training embeddings, to score the validation part
        embedding_sums = torch.zeros(N_CLASSES, model.objective.out_features, device=device)
        embedding_counts = torch.zeros(N_CLASSES, device=device)
        for batch, images in zip(batches, tqdm(loader, desc=f"epoch {epoch + 1}/{settings.max_epochs}", unit="batch", disable=not progress, leave=False)):
            x = images.to(device, non_blocking=True)
            y = torch.from_numpy(train_y[batch]).to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                outputs = forward(x)
                loss = model.objective.loss(outputs.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            train_loss += loss.detach() * len(batch)
            if settings.objective != "prototype":
                correct += (model.predict(outputs.detach().float()) == y).sum()
            else:
                embedding_sums.index_add_(0, y, outputs.detach().float())
                embedding_counts += torch.bincount(y, minlength=N_CLASSES)
        train_loss, correct = float(train_loss), int(correct)
        seconds = time.perf_counter() - epoch_start
        val_loss, val_out = _evaluate(model, val_x, val_y, settings.batch_size, device)
        prototypes = embedding_sums / embedding_counts.clamp(min=1)[:, None] if settings.objective == "prototype" else None
        val_accuracy = float((model.objective.predict(val_out.to(device), prototypes).cpu().numpy() == val_y).mean())
        record = {
            "epoch": epoch + 1, "train_loss": train_loss / len(train_y), "val_loss": val_loss,
            "train_accuracy": correct / len(train_y) if settings.objective != "prototype" else float("nan"),
            "val_accuracy": val_accuracy, "seconds": seconds, "patterns_per_s": len(train_y) / seconds,
        }
        state["history"].append(record)
        score = val_loss if settings.early_stopping == "val_loss" else -val_accuracy  # lower is better
        if score < state["best_score"]:
            state.update(best_score=score, best_epoch=len(state["history"]) - 1, wait=0, best_model=copy.deepcopy(model.state_dict()))
        elif state["history"][state["best_epoch"]]["val_accuracy"] >= LEARNED_MIN_VALIDATION_ACCURACY:
            # the patience counts once the kept epoch has learned (the record's `learned`): a model
            # still at chance is not on a plateau (the published optimiser holds a prototype model
            # there for ~20 epochs at the default scale) and runs on to its cap, not converged
            state["wait"] += 1
        state["epoch"] = epoch
        save_model_file(checkpoint_path, {
            **state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "settings": settings_json, "inputs_hash": inputs_hash,
        })

    model.load_state_dict(state["best_model"])
    if settings.objective == "prototype":
        _, val_out = _evaluate(model, val_x, val_y, settings.batch_size, device)
        model.prototypes.copy_(class_prototypes(val_out, torch.from_numpy(val_y)).to(device))
    test_x, test_y = data["images"][parts[TEST]], data["labels"][parts[TEST]]
    _, test_out = _evaluate(model, test_x, test_y, settings.batch_size, device)
    test_accuracy = float((model.predict(test_out.to(device)).cpu().numpy() == test_y).mean()) if len(test_y) else float("nan")

    save_model_file(out_dir / "model.pt", {"state_dict": model.state_dict(), "settings": settings_json, "input_px": int(train_x.shape[-1]),
                                 "sampling": json.dumps(data["sampling"], sort_keys=True)})
    _write_metrics(out_dir / "metrics.csv", state["history"])
    best = state["history"][state["best_epoch"]]  # the epoch whose weights were kept
    record = write_record(
        out_dir / "record.json", [split_path, *preprocessed], asdict(settings), started,
        seed=settings.seed, device=str(device), epochs_run=len(state["history"]), best_epoch=best["epoch"], best_val_loss=best["val_loss"],
        validation_accuracy=best["val_accuracy"], learned=best["val_accuracy"] >= LEARNED_MIN_VALIDATION_ACCURACY,
        # converged: stopped on a plateau (`patience` epochs without a better validation score);
        # otherwise capped: the epochs ran out while it was still improving or still at chance
        converged=state["wait"] >= settings.patience,
        synthetic_test_accuracy=test_accuracy, patterns={"train": len(train_y), "validation": len(val_y), "test": len(test_y)},
    )
    checkpoint_path.unlink(missing_ok=True)
    return record


def _resumable_checkpoint(path: Path, device, settings_json: str, inputs_hash: str) -> dict | None:
    """The checkpoint's contents if it continues this training, else None: an unreadable one
    (truncated by a kill or a full disk) or one of other settings or data is set aside."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        same = saved["settings"] == settings_json and saved["inputs_hash"] == inputs_hash
    except Exception as err:  # torch raises many types for damaged files
        print(f"{path}: unreadable ({str(err).splitlines()[0]}); training starts afresh", flush=True)
        return None
    if not same:
        print(f"{path}: made with other settings or data; training starts afresh", flush=True)
        return None
    return saved


def _write_metrics(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def calibrate_ood(model_path, split_path, preprocessed, out, quantile: float = KNOWN_QUANTILE) -> dict:
    """The out-of-distribution score of a model.pt or PCA+kNN model.npz (`polarmap.ood`), fitted on
    the training part of its split and its threshold set on the held-out part (the validation
    part; PCA+kNN's held-out tenth), written to `out` (.npz, arrays only)."""
    kind = predictors.kind_of(model_path, per_cell=False)
    if not kind.split_part:
        raise ValueError(f"{model_path}: {kind.title} has no training distribution: no out-of-distribution score")
    data = load_training_data(split_path, preprocessed)
    parts = read_split(split_path)[kind.split_part]
    train_rows, held_out = np.flatnonzero(parts == TRAIN), np.flatnonzero(parts == VALIDATION)
    train_features, held_out_features = kind.ood_features(model_path, data["images"], (train_rows, held_out))
    arrays = fit_ood(train_features, data["labels"][train_rows], held_out_features, quantile)
    if not np.isfinite(arrays["threshold"]):
        raise ValueError(f"{model_path}: its features on the held-out patterns are not finite: no threshold; retrain the model")
    arrays["model_sha256"] = np.array(file_sha256(model_path))  # the one model this threshold is for
    save_npz_atomically(out, arrays)
    return {"threshold": float(arrays["threshold"]), "quantile": quantile, "training_patterns": int(len(train_rows)),
            "held_out_patterns": int(len(held_out))}


def train_pca_knn(split_path, preprocessed, out, configuration: str, seed: int, mode: str,
                  components: int, neighbors: int, augmentation: AugmentationSettings) -> dict:
    """PCA + kNN on the PCA split (90/10). `corrected`: scaler and PCA fitted on the training part
    only. `faithful`: fitted on all patterns, and the test part augmented too (the published leakage)."""
    data = load_training_data(split_path, preprocessed)
    pca_part = read_split(split_path)["pca_part"]
    features = data["images"].reshape(len(data["labels"]), -1).copy()
    augment, _ = CONFIGURATIONS[configuration]
    if augment:
        pipeline = augmentation_pipeline(augmentation, derived_seed(seed, 0))
        rows = np.arange(len(features)) if mode == "faithful" else np.flatnonzero(pca_part == 0)
        side = data["images"].shape[-1]
        for i in rows:
            features[i] = pipeline(image=features[i].reshape(side, side))["image"].ravel()
    train_rows, test_rows = pca_part == 0, pca_part == 1
    model = PcaKnn.fit(features[train_rows], data["labels"][train_rows], components, neighbors,
                       fit_features=features if mode == "faithful" else None)
    model.arrays["meta"] = np.array(json.dumps({"configuration": configuration, "seed": seed, "mode": mode, "input_px": int(data["images"].shape[-1]),
                                                "sampling": data["sampling"]}))
    model.save(out)
    accuracy = float((model.predict(features[test_rows]) == data["labels"][test_rows]).mean())
    # its held-out part is its only validation: chance there means it did not learn
    return {"configuration": configuration, "seed": seed, "synthetic_test_accuracy": accuracy,
            "validation_accuracy": accuracy, "learned": accuracy >= LEARNED_MIN_VALIDATION_ACCURACY,
            "explained_variance": float(model.arrays["explained_variance_ratio"].sum())}
