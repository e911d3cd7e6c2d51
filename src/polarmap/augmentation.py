"""Training-time augmentation (paper section 2.2): the published albumentations pipeline (blur,
brightness and contrast, noise) and domain randomisation (detector effects drawn per pattern)."""

from dataclasses import dataclass

import numpy as np

from polarmap.pattern import min_max


@dataclass(frozen=True)
class AugmentationSettings:
    blur_sigma: tuple[float, float] = (2.0, 5.0)  # a standard deviation, not a variance
    blur_p: float = 0.5
    brightness_limit: float = 0.15
    contrast_limit: float = 0.15
    brightness_contrast_p: float = 0.3
    # albumentations 2.0.8's default, stated so that a library upgrade cannot change it
    noise_std_range: tuple[float, float] = (0.2, 0.44)
    noise_p: float = 0.2


@dataclass(frozen=True)
class DomainRandomisationSettings:
    """Ranges of the experiment-like detector effects, drawn per pattern during training."""
    dose_e_per_pattern: tuple[float, float] = (5000.0, 100000.0)  # log-uniform
    background_e_per_px: tuple[float, float] = (0.0, 1.0)
    read_noise_e: tuple[float, float] = (0.0, 2.0)
    psf_sigma_px: tuple[float, float] = (0.0, 1.0)
    p: float = 0.8


def augmentation_pipeline(settings: AugmentationSettings, seed: int):
    """The paper's training augmentation with albumentations (pinned at 2.0.8), reproducible for a
    seed. Applied after min-max normalisation: every transform clips float images to [0, 1]."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A.Compose(
        [
            A.GaussianBlur(blur_limit=0, sigma_limit=tuple(settings.blur_sigma), p=settings.blur_p),
            A.RandomBrightnessContrast(
                brightness_limit=settings.brightness_limit, contrast_limit=settings.contrast_limit,
                p=settings.brightness_contrast_p,
            ),
            A.GaussNoise(std_range=tuple(settings.noise_std_range), p=settings.noise_p),
        ],
        seed=seed,
    )


def domain_randomisation(settings: DomainRandomisationSettings, seed: int):
    """The experiment-like detector transform (polarmap.experiment) as an augmentation of one
    [0, 1] pattern: with probability p, point-spread, dose, background, Poisson and read noise
    drawn from the ranges, then min-max again. Descan and scan effects are left out: the
    preprocessing centres the disc, and they mix scan positions, not one pattern's pixels."""
    from polarmap.experiment import ExperimentSettings, detector_effects

    rng = np.random.default_rng(seed)
    low, high = np.log(settings.dose_e_per_pattern)

    def transform(image: np.ndarray) -> np.ndarray:
        if rng.random() >= settings.p:
            return image
        detector = ExperimentSettings(
            dose_e_per_pattern=float(np.exp(rng.uniform(low, high))),
            background_e_per_px=float(rng.uniform(*settings.background_e_per_px)),
            read_noise_e=float(rng.uniform(*settings.read_noise_e)),
            psf_sigma_px=float(rng.uniform(*settings.psf_sigma_px)),
            seed=int(rng.integers(2**31)),
        )
        counted = detector_effects(image[None], 0, detector)
        if counted.max() <= counted.min():  # nothing counted: keep the clean pattern
            return image
        return min_max(counted)[0]

    return transform


def augmenter(kind: str, paper: AugmentationSettings, randomisation: DomainRandomisationSettings, seed: int):
    """One pattern (h, w) in [0, 1] -> its augmented copy: the paper's albumentations pipeline or
    domain randomisation, reproducible for a seed."""
    if kind == "paper":
        pipeline = augmentation_pipeline(paper, seed)
        return lambda image: pipeline(image=image)["image"]
    if kind == "domain_randomisation":
        return domain_randomisation(randomisation, seed)
    raise ValueError(f"unknown augmentation {kind!r}; use paper or domain_randomisation")
