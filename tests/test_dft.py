"""The O-vacancy stage with a real Quantum ESPRESSO (installed by .ci/setup): inputs read back
with ase, a real SCF and a capped relaxation, QE's failure reasons, the literature mode, and the
defect supercell with its mask."""

import re

import ase.io
import numpy as np
import pytest

from polarmap import dft
from polarmap.structures import build_supercell

FAST = dict(ecutwfc_ry=25, ecutrho_ry=100)


@pytest.fixture(scope="module")
def pseudo_dir(tmp_path_factory):
    return dft.fetch_pseudopotentials(tmp_path_factory.mktemp("pseudo") / "PseudoDojo")


@pytest.mark.parametrize("version", [(6, 7), (7, 3)])
def test_pw_input_reads_back_with_hubbard_u_in_the_installed_syntax(tmp_path, version):
    settings = dft.DftSettings(supercell=(1, 1, 2), **FAST)
    atoms, vacancy = dft.vacancy_cell(settings)
    files = {s: f"{s}.upf" for s in ("K", "Na", "Nb", "O")}
    dft.write_pw_input(atoms, settings, tmp_path, files, tmp_path / "pw.in", version=version)
    back = ase.io.read(tmp_path / "pw.in", format="espresso-in")
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols() and np.allclose(back.positions, atoms.positions, atol=1e-6)
    text = (tmp_path / "pw.in").read_text()
    nb_species = list(dict.fromkeys(atoms.get_chemical_symbols())).index("Nb") + 1
    if version < (7, 1):
        assert re.search(rf"hubbard_u\({nb_species}\)\s+= 2.4", text, re.IGNORECASE) and re.search(r"lda_plus_u\s+= \.true\.", text)
    else:
        assert "HUBBARD {atomic}\nU Nb-4d 2.4" in text and "lda_plus_u" not in text
    assert atoms.get_chemical_formula() == "KNaNb2O5" and np.allclose(vacancy, [1.9918, 1.9918, 3.9835], atol=1e-3)


def test_real_scf_on_a_tiny_cell(pseudo_dir, tmp_path):
    atoms = build_supercell((1, 1, 1), "RD")
    atoms = atoms[[a.index for a in atoms if a.symbol != "Na"]]  # KNbO3
    dft.write_pw_input(atoms, dft.DftSettings(**FAST), pseudo_dir, dft.check_pseudopotentials(pseudo_dir), tmp_path / "scf.in",
                       calculation="scf", version=dft.pw_version())
    dft.run_pw(tmp_path / "scf.in", tmp_path / "scf.out", ranks=2)
    result = ase.io.read(tmp_path / "scf.out", format="espresso-out")
    assert result.get_potential_energy() < -3000  # eV, converged
    assert "Hubbard energy" in (tmp_path / "scf.out").read_text()


def test_capped_relaxation_moves_the_chain_nb_away_and_fails_when_convergence_is_required(pseudo_dir, tmp_path):
    settings = dft.DftSettings(supercell=(1, 1, 2), nstep=2, **FAST)
    atoms, vacancy = dft.vacancy_cell(settings)
    dft.write_pw_input(atoms, settings, pseudo_dir, dft.check_pseudopotentials(pseudo_dir), tmp_path / "pw.in", version=dft.pw_version())
    with pytest.raises(RuntimeError, match=r"pw\.out: pw\.x failed: The maximum number of steps has been reached"):
        dft.run_pw(tmp_path / "pw.in", tmp_path / "pw.out", ranks=2)
    relaxed = dft.relaxed_structure(tmp_path / "pw.out")
    rows = dft.displacement_table(atoms, relaxed, vacancy)
    chain_nb = [r for r in rows if r["symbol"] == "Nb" and r["distance_to_vacancy"] < 2.1]
    assert len(chain_nb) == 2
    assert all(r["away_from_vacancy"] > 0.001 for r in chain_nb)  # both neighbours along the chain move away
    assert np.sign(chain_nb[0]["dz"]) == -np.sign(chain_nb[1]["dz"])


def test_broken_input_fails_with_the_reason_from_qe(pseudo_dir, tmp_path):
    atoms = build_supercell((1, 1, 1), "RD")
    files = {**dft.check_pseudopotentials(pseudo_dir), "K": "missing.upf"}
    dft.write_pw_input(atoms, dft.DftSettings(**FAST), pseudo_dir, files, tmp_path / "bad.in", calculation="scf", version=dft.pw_version())
    with pytest.raises(RuntimeError, match=r"bad\.out: pw\.x failed: Error in routine .*"):
        dft.run_pw(tmp_path / "bad.in", tmp_path / "bad.out")


def test_pseudopotentials_are_checked(pseudo_dir, tmp_path):
    for upf in pseudo_dir.iterdir():
        (tmp_path / upf.name).write_bytes(upf.read_bytes())
    (tmp_path / "O.upf").write_text("tampered")
    with pytest.raises(ValueError, match=r"O\.upf: SHA-256 differs"):
        dft.check_pseudopotentials(tmp_path)
    assert dft.user_pseudopotentials(tmp_path, ["Na", "Nb"]) == {"Na": "Na.upf", "Nb": "Nb.upf"}
    (tmp_path / "Nb.upf").unlink()
    with pytest.raises(FileNotFoundError, match="no UPF file for Nb"):
        dft.user_pseudopotentials(tmp_path, ["Nb"])


def test_literature_mode_and_the_defect_supercell():
    settings = dft.DftSettings(mode="literature", supercell=(2, 2, 6))
    atoms, vacancy = dft.vacancy_cell(settings)
    relaxed = dft.literature_relaxation(atoms, vacancy, settings)
    rows = dft.displacement_table(atoms, relaxed, vacancy)
    moved = [r for r in rows if r["displacement"] > 1e-9]
    assert all(r["symbol"] == "Nb" for r in moved) and relaxed.info["relaxation"].startswith("literature")
    assert sorted(round(abs(r["dz"]), 3) for r in moved) == [0.12, 0.12, 0.3, 0.3, 0.4, 0.4]  # three shells on each side
    assert all(r["away_from_vacancy"] > 0 for r in moved)

    field = dft.vacancy_field(atoms, relaxed, vacancy)
    big = dft.defect_supercell((4, 4, 8), settings, field, radius_angstrom=3.0)
    assert big.get_chemical_formula() == build_supercell((4, 4, 8), "RD")[:-1].get_chemical_formula()  # one O fewer
    reference, big_vacancy = dft.vacancy_cell(dft.DftSettings(supercell=(4, 4, 8)))
    shift = np.linalg.norm(big.positions - reference.positions, axis=1)
    assert shift.max() > 0.2 and (shift > 1e-6).sum() >= 4  # the chain Nb carry the field
    mask = dft.defect_mask((16, 16), big.cell.lengths()[0] / 16, big_vacancy[:2], big.cell.lengths()[:2], 3.0)
    row, col = np.argwhere(mask).mean(axis=0)
    assert mask.sum() > 0 and abs(col * big.cell.lengths()[0] / 16 - big_vacancy[0]) < 1.0 and abs(row * big.cell.lengths()[1] / 16 - big_vacancy[1]) < 1.0


def test_hubbard_u_by_linear_response(pseudo_dir, tmp_path):
    """hp.x on KNbO3 (the 1x1x1 cell) gives a U for Nb 4d in the range linear response gives
    for 4d transition-metal oxides (the paper used 2.4 eV)."""
    settings = dft.DftSettings(supercell=(1, 1, 1), mpi_ranks=2, **FAST)
    u = dft.compute_hubbard_u(settings, pseudo_dir, dft.check_pseudopotentials(pseudo_dir), tmp_path)
    assert 0.5 < u < 10.0, u
    assert "JOB DONE" in (tmp_path / "hp.out").read_text()
