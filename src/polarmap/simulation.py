"""4D-STEM simulation of a supercell with abTEM, streamed to the HDF5 format in scan-row blocks.

Every data set shares one detector calibration: the pattern is the diffraction of a probe
window of `probe_window_cells` pseudocubic cells (the paper's 2x2 training cell), with
`gpts_per_cell` real-space samples per cell. PRISM gets that directly from its interpolation
factor (supercell / window; 1 = exact, which is the case for the training cell); plain
multislice bins the finer pattern of a larger cell by an odd factor about the optical axis.

abTEM is imported where it is used: importing it takes ~3 s, which the structure and QSTEM
jobs (and the command line's --help) should not pay.
"""

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import ase
import h5py
import numpy as np
from tqdm import tqdm

from polarmap import io
from polarmap.blocks import row_ranges
from polarmap.classes import CLASS_NAMES, UNKNOWN_LABEL, class_index
from polarmap.provenance import config_hash, provenance_attrs
from polarmap.quantities import check_quantity, wavelength_angstrom
from polarmap.structures import lateral_symmetries


@dataclass(frozen=True)
class SimulationSettings:
    method: str = "prism"  # "prism" or "multislice"
    energy_kev: float = 200.0
    semiangle_mrad: float = 24.0
    gpts_per_cell: int = 128
    probe_window_cells: int = 2
    scan_px: int = 128  # probe positions along each axis, spread over the whole supercell
    slice_thickness_angstrom: float = 0.0  # 0: half a pseudocubic cell (one atomic plane)
    frozen_phonon_configs: int = 0  # 0: a static lattice
    frozen_phonon_sigma_angstrom: float = 0.08
    frozen_phonon_seed: int = 0
    # origin of the scan grid in scan steps (row, col): a random sub-step offset per data set keeps
    # its probe positions off every other set's
    scan_origin_steps: tuple[float, float] = (0.0, 0.0)
    device: str = "cpu"  # "cpu" or "gpu" (needs cupy)
    rows_per_block: int = 8
    compression: str = "none"  # "none" or "lzf"

    def __post_init__(self):
        if self.method not in ("prism", "multislice"):
            raise ValueError(f"simulation.method must be 'prism' or 'multislice', got {self.method!r}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"simulation.device must be 'cpu' or 'gpu', got {self.device!r}")

    @property
    def detector_px(self) -> int:
        return self.gpts_per_cell * self.probe_window_cells


@dataclass(frozen=True)
class Geometry:
    """Sampling of one supercell under given settings."""
    cells: tuple[int, int, int]
    a_pc: float
    window_factor: int  # supercell cells per probe window cell, laterally

    @property
    def extent(self) -> tuple[float, float]:
        return self.cells[0] * self.a_pc, self.cells[1] * self.a_pc

    @property
    def thickness_nm(self) -> float:
        return self.cells[2] * self.a_pc / 10


def geometry(atoms: ase.Atoms, settings: SimulationSettings) -> Geometry:
    a_pc = float(atoms.info["a_pc_angstrom"])
    cells = tuple(int(round(length / a_pc)) for length in atoms.cell.lengths())
    if cells[0] != cells[1]:
        raise ValueError(f"supercell {cells} must be square laterally")
    if cells[0] % settings.probe_window_cells:
        raise ValueError(
            f"supercell {cells[0]}x{cells[1]} is not a multiple of probe_window_cells={settings.probe_window_cells}"
        )
    factor = cells[0] // settings.probe_window_cells
    if settings.method == "multislice" and factor % 2 == 0:
        raise ValueError(
            f"multislice on a {cells[0]}x{cells[1]} cell would bin patterns by an even factor ({factor}), "
            "which shifts the optical axis by half a pixel; use method: prism for this data set"
        )
    return Geometry(cells, a_pc, factor)


def estimated_memory_mb(settings: SimulationSettings, lateral_cells: int) -> int:
    """Peak memory of one simulation job, for schedulers: the S-matrix (about 180 plane waves
    within 24 mrad for a 2-cell window) or the multislice wave batch, plus one block of
    patterns, each held twice, over a fixed interpreter baseline. Measured: 1.19 GB for a
    paper-scale training class with PRISM (this gives 1.9 GB)."""
    gpts = settings.gpts_per_cell * lateral_cells
    waves = 180 * (settings.semiangle_mrad / 24) ** 2 if settings.method == "prism" else 64 * 4
    block = settings.rows_per_block * settings.scan_px * settings.detector_px**2
    configs = max(1, settings.frozen_phonon_configs)  # one S-matrix (or wave batch) per configuration
    return int(600 + 2 * configs * waves * gpts**2 * 8 / 1e6 + 2 * block * 8 / 1e6)


def detector_mrad_per_px(a_pc: float, settings: SimulationSettings) -> float:
    return 1e3 * wavelength_angstrom(settings.energy_kev) / (settings.probe_window_cells * a_pc)


def _potential(atoms: ase.Atoms, geo: Geometry, settings: SimulationSettings, exit_planes: int | None = None):
    """abTEM's potential of `atoms`; `exit_planes`: also keep the wave every that many slices."""
    import abtem

    if settings.frozen_phonon_configs > 0:
        atoms = abtem.FrozenPhonons(
            atoms, num_configs=settings.frozen_phonon_configs,
            sigmas=settings.frozen_phonon_sigma_angstrom, seed=settings.frozen_phonon_seed,
        )
    slice_thickness = settings.slice_thickness_angstrom or geo.a_pc / 2
    gpts = (settings.gpts_per_cell * geo.cells[0], settings.gpts_per_cell * geo.cells[1])
    return abtem.Potential(
        atoms, gpts=gpts, slice_thickness=slice_thickness, projection="infinite",
        parametrization="lobato", device=settings.device, exit_planes=exit_planes,
    )


class _Simulator:
    """Builds what is shared by all scan rows once (the PRISM S-matrix), then simulates rows."""

    def __init__(self, atoms: ase.Atoms, geo: Geometry, settings: SimulationSettings):
        import abtem

        # FFTW_MEASURE (abTEM's default) picks FFT algorithms by timing them, so two runs of one
        # set could differ in round-off (~2e-6); an estimated plan is the same in every run
        abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE"})
        self.geo, self.settings = geo, settings
        self.detector = abtem.PixelatedDetector(max_angle="full")
        potential = _potential(atoms, geo, settings)
        energy = settings.energy_kev * 1e3
        if settings.method == "prism":
            self.smatrix = abtem.SMatrix(
                potential=potential, energy=energy, semiangle_cutoff=settings.semiangle_mrad,
                interpolation=geo.window_factor, downsample=False, device=settings.device,
            ).build(lazy=False)
        else:
            self.potential = potential
            self.probe = abtem.Probe(energy=energy, semiangle_cutoff=settings.semiangle_mrad, device=settings.device)

    def _measure(self, scan) -> np.ndarray:
        """The patterns at an abTEM scan's positions, as abTEM orders them, on the CPU."""
        if self.settings.method == "prism":
            measured = self.smatrix.reduce(scan=scan, detectors=self.detector)
        else:
            measured = self.probe.scan(self.potential, scan=scan, detectors=self.detector, max_batch=64, lazy=False)
        if measured.is_lazy:
            measured = measured.compute(progress_bar=False)
        return np.asarray(measured.to_cpu().array if self.settings.device == "gpu" else measured.array)

    def rows(self, row_start: int, row_stop: int, scan_step: tuple[float, float]) -> np.ndarray:
        """Patterns for scan rows [row_start, row_stop) as (rows, cols, det_rows, det_cols)."""
        import abtem

        ncols = self.settings.scan_px
        origin_x, origin_y = (self.settings.scan_origin_steps[1] * scan_step[0], self.settings.scan_origin_steps[0] * scan_step[1])
        scan = abtem.GridScan(
            start=(origin_x, origin_y + row_start * scan_step[1]),
            end=(origin_x + self.geo.extent[0], origin_y + row_stop * scan_step[1]),
            gpts=(ncols, row_stop - row_start), endpoint=False,
        )
        array = self._measure(scan)
        array = array.reshape(ncols, row_stop - row_start, *array.shape[-2:])
        # abTEM orders (scan_x, scan_y, k_x, k_y); the format is (row=y, col=x, k_y, k_x).
        patterns = array.transpose(1, 0, 3, 2)
        if self.settings.method == "multislice" and self.geo.window_factor > 1:
            patterns = bin_centred(patterns, self.geo.window_factor)
        return patterns.astype(np.float32)

    def at(self, positions_angstrom: np.ndarray) -> np.ndarray:
        """Patterns (n, det_rows, det_cols) at probe positions (n, 2) = (x, y) in angstrom, wrapped
        into the periodic supercell: a scan turned against the crystal, or drifting."""
        import abtem

        positions = np.asarray(positions_angstrom, dtype=np.float64) % np.array(self.geo.extent)
        array = self._measure(abtem.CustomScan(positions)).transpose(0, 2, 1)  # abTEM's (k_x, k_y) -> (k_y, k_x)
        if self.settings.method == "multislice" and self.geo.window_factor > 1:
            array = bin_centred(array, self.geo.window_factor)
        return array.astype(np.float32)


def scan_positions(scan_shape: tuple[int, int], step_angstrom: float, angle_deg: float = 0.0, drift: float = 0.0) -> np.ndarray:
    """Probe positions (rows * cols, 2) = (x, y) in angstrom of a scan in row-major order, +row
    along +y: turned `angle_deg` counter-clockwise against the crystal's axes, and each scan line
    shifted along the fast axis by `drift` steps per line (a linear drift)."""
    rows, cols = np.indices(scan_shape, dtype=np.float64)
    x, y = (cols + drift * rows) * step_angstrom, rows * step_angstrom
    turn = np.radians(angle_deg)
    return np.stack([np.cos(turn) * x - np.sin(turn) * y, np.sin(turn) * x + np.cos(turn) * y], axis=-1).reshape(-1, 2)


def bin_centred(patterns: np.ndarray, factor: int) -> np.ndarray:
    """Sum factor x factor detector pixels, with the zero-frequency pixel (at n // 2, abTEM's
    centred layout) in the middle of the central bin; factor must be odd."""
    n_rows, n_cols = patterns.shape[-2:]
    if factor % 2 == 0 or n_rows % factor or n_cols % factor:
        raise ValueError(f"cannot bin {n_rows}x{n_cols} patterns by {factor}: needs an odd factor dividing both")
    # move the zero-frequency pixel n // 2 to the middle of the central bin
    shifts = [(n // factor // 2) * factor + factor // 2 - n // 2 for n in (n_rows, n_cols)]
    shifted = np.roll(patterns, shifts, axis=(-2, -1))
    lead = patterns.shape[:-2]
    return shifted.reshape(*lead, n_rows // factor, factor, n_cols // factor, factor).sum(axis=(-3, -1))


def scan_symmetries_px(atoms: ase.Atoms, geo: Geometry, settings: SimulationSettings) -> list[list[int]]:
    """Scan translations (rows, cols) that map the simulated scan onto itself: the structure's
    lateral symmetries that land on whole scan steps. Frozen phonons displace every atom at
    random, so they leave none."""
    if settings.frozen_phonon_configs > 0:
        return []
    px_per_cell = settings.scan_px / geo.cells[0]
    return [[int(j * px_per_cell), int(i * px_per_cell)] for i, j in lateral_symmetries(atoms)
            if float(i * px_per_cell).is_integer() and float(j * px_per_cell).is_integer()]


def dataset_attrs(name, atoms, geo, settings, classes, provenance_settings) -> dict:
    import abtem

    return {
        "name": name,
        "classes": list(classes),
        "class_names": list(CLASS_NAMES),
        "thickness_nm": geo.thickness_nm,
        "supercell": "x".join(map(str, geo.cells)),
        "polarization": atoms.info.get("polarization_class", "none"),
        "nb_variant": atoms.info.get("variant", ""),
        "nb_displacement_angstrom": float(atoms.info.get("nb_displacement_angstrom", 0.0)),
        "energy_kev": settings.energy_kev,
        "semiangle_mrad": settings.semiangle_mrad,
        "detector_mrad_per_px": detector_mrad_per_px(geo.a_pc, settings),
        "scan_step_angstrom": geo.extent[0] / settings.scan_px,
        "scan_origin_angstrom": json.dumps([v * geo.extent[0] / settings.scan_px for v in settings.scan_origin_steps]),
        # what makes this crystal one of its own: the seeds of its disorder, recorded with the data
        "a_site_order": atoms.info.get("a_site_order", ""),
        "a_site_seed": int(atoms.info.get("a_site_seed", -1)),
        "frozen_phonon_seed": settings.frozen_phonon_seed if settings.frozen_phonon_configs else -1,
        "scan_symmetries_px": json.dumps(scan_symmetries_px(atoms, geo, settings)),
        "source": f"abTEM {abtem.__version__} ({settings.method}, interpolation {geo.window_factor if settings.method == 'prism' else 1})",
        "simulation_settings": json.dumps(asdict(settings), sort_keys=True),
        **provenance_attrs(provenance_settings),
    }


def simulate(
    atoms: ase.Atoms,
    out_path: str | Path,
    name: str,
    settings: SimulationSettings,
    classes: tuple[str, ...] = (),
    provenance_settings: dict | None = None,
    progress: bool = True,
) -> None:
    """Simulate a 4D-STEM data set of `atoms` into `out_path`.

    Work survives interruption: rows go to `<out>.partial` with a completed-row counter, and a
    rerun with the same settings continues from there. The final file appears atomically.
    """
    out_path = Path(out_path)
    geo = geometry(atoms, settings)
    label = class_index(classes[0]) if len(classes) == 1 else UNKNOWN_LABEL
    provenance_settings = provenance_settings or {"simulation": asdict(settings), "name": name}
    attrs = dataset_attrs(name, atoms, geo, settings, classes, provenance_settings)
    attrs["structure_hash"] = config_hash({"numbers": atoms.numbers.tolist(), "positions": np.round(atoms.positions, 6).tolist(), "cell": atoms.cell.tolist()})
    scan_shape = (settings.scan_px, settings.scan_px)
    detector_shape = (settings.detector_px, settings.detector_px)
    step = (geo.extent[0] / settings.scan_px, geo.extent[1] / settings.scan_px)
    partial = out_path.with_name(out_path.name + ".partial")
    rows_done = _resumable_rows(partial, attrs)
    if rows_done:
        print(f"{name}: resuming from scan row {rows_done} of {settings.scan_px} ({partial})", file=sys.stderr)
    simulator = _Simulator(atoms, geo, settings)
    compression = None if settings.compression == "none" else settings.compression
    if rows_done == 0:
        with io.create_dataset_file(partial, scan_shape, detector_shape, attrs, compression) as f:
            f.attrs["rows_completed"] = 0
            if "vacancy_position" in atoms.info:  # a defect set: mark the positions around the vacancy column
                from polarmap.dft import defect_mask, vacancy_position

                vacancy = vacancy_position(atoms).tolist()
                f.attrs["vacancy_position_angstrom"] = json.dumps(vacancy)
                f.attrs["defect_radius_angstrom"] = float(atoms.info["defect_radius_angstrom"])
                f.create_dataset("defect_mask", data=defect_mask(scan_shape, step[0], vacancy[:2], geo.extent, float(atoms.info["defect_radius_angstrom"])))
    with io.writing(partial, out_path, "r+", keep_tmp=True) as f:
        blocks = list(row_ranges(settings.scan_px, settings.rows_per_block, first_row=rows_done))
        for row_start, row_stop in tqdm(blocks, desc=f"simulate {name}", unit="block", disable=not progress):
            patterns = simulator.rows(row_start, row_stop, step)
            labels = np.full(patterns.shape[:2], label, dtype=np.int8)
            io.write_rows(f, row_start, patterns, labels, source=name)
            f.attrs["rows_completed"] = row_stop
            f.flush()
        del f.attrs["rows_completed"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(out_path)


def _resumable_rows(partial: Path, attrs: dict) -> int:
    """Rows already simulated in a partial file made with the same settings, else 0. The row
    counter is trusted only as far as the rows hold data: a write that failed (a full disk) can
    leave the counter ahead of patterns that never reached the file, which read as NaN."""
    if not partial.exists():
        return 0
    try:
        with h5py.File(partial, "r") as f:
            same = f.attrs.get("config_hash") == attrs["config_hash"] and f.attrs.get("structure_hash") == attrs["structure_hash"]
            rows = int(f.attrs.get("rows_completed", 0)) if same else 0
            written = next((row for row in range(rows) if not np.isfinite(f["patterns"][row]).all()), rows)
    except (OSError, KeyError):
        same, written = False, 0
    if not same or written == 0:
        partial.unlink()
        return 0
    return written


MAX_LIBRARY_THICKNESSES = 400


@dataclass(frozen=True)
class PacbedLibrarySettings:
    """A thickness series of position-averaged patterns (PACBED) for `polarmap.pacbed`: one
    multislice run of a probe-window column of `class_name` (every class gives the same radial
    profile: each is a rotation or mirror of another), its wave kept every `step_nm`."""
    max_thickness_nm: float = 80.0
    step_nm: float = 1.0  # rounded to whole slices
    positions_per_cell: int = 8  # probe positions along each axis of one cell (4 bias the PACBED: measured)
    frozen_phonon_configs: int = 4
    class_name: str = "RU"

    def __post_init__(self):
        for key in ("max_thickness_nm", "step_nm"):
            check_quantity("thickness_nm", getattr(self, key), f"pacbed library: {key}", "give it in nm")
        if self.step_nm > self.max_thickness_nm:
            raise ValueError(f"pacbed library: step_nm {self.step_nm} must be at most max_thickness_nm {self.max_thickness_nm}")
        # abTEM holds every exit plane's patterns at once: 400 of 64 positions of 256x256 px are 6.7 GB
        if self.max_thickness_nm / self.step_nm > MAX_LIBRARY_THICKNESSES:
            raise ValueError(f"pacbed library: {self.max_thickness_nm:g} nm in steps of {self.step_nm:g} nm are more than "
                             f"{MAX_LIBRARY_THICKNESSES} thicknesses, all held in memory at once; take a larger step_nm")
        if self.positions_per_cell < 1 or self.frozen_phonon_configs < 0:
            raise ValueError("pacbed library: positions_per_cell must be at least 1 and frozen_phonon_configs at least 0")


def pacbed_library(settings: SimulationSettings, library: PacbedLibrarySettings, structure=None) -> dict:
    """PACBEDs (thickness, rows, cols) at `settings`' energy, semi-angle and detector sampling,
    the optical axis at (rows // 2, cols // 2), with their thicknesses (nm) and sampling."""
    import abtem

    from polarmap.structures import StructureSettings, build_supercell, load_lattice

    structure = structure or StructureSettings()
    a_pc = load_lattice(structure).a_pc
    window = settings.probe_window_cells
    atoms = build_supercell((window, window, int(np.ceil(library.max_thickness_nm * 10 / a_pc))), library.class_name, structure)
    settings = SimulationSettings(**{**asdict(settings), "method": "multislice", "frozen_phonon_configs": library.frozen_phonon_configs})
    geo = geometry(atoms, settings)
    slice_thickness = settings.slice_thickness_angstrom or geo.a_pc / 2
    abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE"})  # the same numbers in every run
    potential = _potential(atoms, geo, settings, exit_planes=max(1, int(round(library.step_nm * 10 / slice_thickness))))
    probe = abtem.Probe(energy=settings.energy_kev * 1e3, semiangle_cutoff=settings.semiangle_mrad, device=settings.device)
    scan = abtem.GridScan(start=(0, 0), end=(geo.a_pc, geo.a_pc), gpts=library.positions_per_cell, endpoint=False)
    measured = probe.scan(potential, scan=scan, detectors=abtem.PixelatedDetector(max_angle="full"), lazy=False)
    array = np.asarray(measured.to_cpu().array if settings.device == "gpu" else measured.array)
    thickness_nm = np.asarray(measured.axes_metadata[0].values, dtype=np.float64) / 10
    patterns = array.mean(axis=(1, 2)).transpose(0, 2, 1)  # abTEM's (k_x, k_y) -> the format's (k_y, k_x)
    keep = thickness_nm > 0  # the first exit plane is the entrance surface
    return {"patterns": patterns[keep].astype(np.float32), "thickness_nm": thickness_nm[keep], "mrad_per_px": detector_mrad_per_px(a_pc, settings),
            "energy_kev": settings.energy_kev, "semiangle_mrad": settings.semiangle_mrad,
            "source": f"abTEM {abtem.__version__} (multislice, {library.frozen_phonon_configs} frozen-phonon configurations)",
            "settings": json.dumps({"simulation": asdict(settings), "library": asdict(library)}, sort_keys=True)}
