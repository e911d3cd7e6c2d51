"""`polarmap <stage>`: every stage of the workflow, runnable by hand.

Stages that belong to a data set of a study take `--config FILE --dataset NAME`; the
Snakemake rules pass the same settings inline with `--settings JSON`, so that Snakemake
reruns a job exactly when its own settings change.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from polarmap import config as study_config


def _job_settings(args) -> dict:
    if args.settings:
        return json.loads(args.settings)
    if not (args.config and args.dataset):
        raise ValueError("give --config FILE and --dataset NAME (or --settings JSON)")
    return study_config.dataset_job_settings(study_config.load_config(args.config), args.dataset)


def _structure(job: dict):
    from polarmap.structures import build_supercell

    dataset = job["dataset"]
    settings = study_config.structure_settings(job)
    return build_supercell(tuple(dataset["supercell"]), dataset["polarization"], settings)


def cmd_structure(args) -> None:
    from polarmap.structures import write_structure

    job = _job_settings(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_structure(_structure(job), args.out)


def cmd_simulate(args) -> None:
    from polarmap.simulation import simulate
    from polarmap.structures import read_structure

    job = _job_settings(args)
    atoms = read_structure(args.structure) if args.structure else _structure(job)
    simulate(
        atoms, args.out, job["name"], study_config.simulation_settings(job),
        classes=tuple(job["dataset"]["classes"]), provenance_settings=job, progress=not args.quiet,
    )


def cmd_qstem(args) -> None:
    from polarmap.qstem import write_cfg, write_qsc
    from polarmap.structures import read_structure

    job = _job_settings(args)
    atoms = read_structure(args.structure) if args.structure else _structure(job)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = job["name"]
    write_cfg(atoms, out_dir / f"{name}.cfg")
    write_qsc(atoms, study_config.simulation_settings(job), f"{name}.cfg", f"{name}_patterns", out_dir / f"{name}.qsc")


def cmd_import_tiff(args) -> None:
    from polarmap.classes import CLASS_NAMES
    from polarmap.io import import_tiff_folder
    from polarmap.provenance import provenance_attrs

    accepted = args.accepted or ([args.label] if args.label else [])
    attrs = {
        "name": args.name or Path(args.folder).name,
        "classes": accepted,
        "class_names": list(CLASS_NAMES),
        "thickness_nm": args.thickness_nm,
        "supercell": args.supercell,
        "energy_kev": args.energy_kev,
        "semiangle_mrad": args.semiangle_mrad,
        "detector_mrad_per_px": args.mrad_per_px,
        "scan_step_angstrom": args.scan_step_angstrom,
        "source": args.source,
        **provenance_attrs({"import": str(Path(args.folder).resolve()), "label": args.label}),
    }
    import_tiff_folder(args.folder, args.out, attrs, scan_shape=args.scan_shape, label=args.label)


def cmd_info(args) -> None:
    from polarmap.io import info

    print(info(args.file, check_values=not args.fast))


def cmd_summary(args) -> None:
    from polarmap.io import write_summary

    write_summary(args.files, args.out)


def cmd_check_config(args) -> None:
    config = study_config.load_config(args.config)
    print(f"{args.config}: valid; study '{config['study']}', data sets: {', '.join(study_config.simulated_datasets(config))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polarmap", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def study_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="study config YAML (e.g. config.yaml)")
        p.add_argument("--dataset", help="data set name from the config (e.g. train_RM, 1S, reference)")
        p.add_argument("--settings", help=argparse.SUPPRESS)  # inline JSON from the Snakemake rules
        p.set_defaults(func=func)
        return p

    p = study_command("structure", cmd_structure, "Build a KNN supercell; writes extended XYZ and CIF.")
    p.add_argument("--out", required=True, help="output .xyz path (a .cif is written beside it)")

    p = study_command("simulate", cmd_simulate, "Simulate a 4D-STEM data set with abTEM into HDF5.")
    p.add_argument("--structure", help="extended-XYZ structure (default: build it from the config)")
    p.add_argument("--out", required=True, help="output .h5 path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = study_command("qstem", cmd_qstem, "Write QSTEM .cfg and .qsc inputs for a data set.")
    p.add_argument("--structure", help="extended-XYZ structure (default: build it from the config)")
    p.add_argument("--out-dir", required=True, help="output folder")

    p = sub.add_parser("import-tiff", help="Import a folder of one-pattern TIFFs (QSTEM or detector export).")
    p.add_argument("folder", help="folder of TIFFs, row-major scan index as the last number in each name")
    p.add_argument("out", help="output .h5 path")
    p.add_argument("--scan-shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="default: a square scan")
    p.add_argument("--name", help="data set name (default: the folder name)")
    p.add_argument("--label", help="class of every pattern (e.g. RM); default: unknown (-1)")
    p.add_argument("--accepted", nargs="+", help="classes counted as correct (default: the label)")
    p.add_argument("--thickness-nm", type=float, default=float("nan"))
    p.add_argument("--supercell", default="experimental")
    p.add_argument("--energy-kev", type=float, default=200.0)
    p.add_argument("--semiangle-mrad", type=float, default=24.0)
    p.add_argument("--mrad-per-px", type=float, default=float("nan"), help="detector calibration")
    p.add_argument("--scan-step-angstrom", type=float, default=float("nan"))
    p.add_argument("--source", default="QSTEM", help="simulator and version, or instrument")
    p.set_defaults(func=cmd_import_tiff)

    p = sub.add_parser("info", help="Validate a data set and summarise it.")
    p.add_argument("file")
    p.add_argument("--fast", action="store_true", help="skip the scan of every pattern for NaNs")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("summary", help="One TSV line per data set (shape, thickness, classes, mean CoM).")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output .tsv path")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("check-config", help="Validate a study config against the schema.")
    p.add_argument("config")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, KeyError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"polarmap {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
